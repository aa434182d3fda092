//! The one progress-bar style of the workspace (training, sampling, Inception features, bits/dim).
pub use indicatif::ProgressBar;
use indicatif::{ProgressDrawTarget, ProgressStyle};

/// The template of [`bar`] for a count of `unit`.
fn template(unit: &str) -> String {
    format!(
        "{{prefix}} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    )
}

/// A progress bar on stderr counting `total` items of `unit` (plain words such as `"steps"` or
/// `"images"`), labelled `label` (e.g. `"training"`, `"Inception"`); `set_message` adds text at the
/// end (e.g. the loss). When `show` is false the bar is hidden and drawing it costs nothing. On a
/// stderr that is not a terminal indicatif draws nothing either.
///
/// Panics if `unit` contains `{` or `}` (it is part of the template; callers pass constants).
pub fn bar(show: bool, total: u64, unit: &'static str, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&template(unit))
            .expect("a unit without braces gives a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_is_given_and_hides_when_asked() {
        let b = bar(true, 10, "images", "Inception");
        b.inc(3);
        assert_eq!((b.position(), b.length()), (3, Some(10)));
        assert_eq!(b.prefix(), "Inception");
        let hidden = bar(false, 10, "steps", "x");
        // Not the styled bar (whose prefix is set) but indicatif's hidden one.
        assert!(hidden.is_hidden() && hidden.prefix().is_empty());
    }

    #[test]
    fn the_template_shows_unit_rate_and_eta() {
        let t = template("network steps");
        assert!(ProgressStyle::with_template(&t).is_ok(), "{t}");
        for part in ["{pos}/{len} network steps", "{per_sec}", "{eta}", "{msg}"] {
            assert!(t.contains(part), "{t} lacks {part}");
        }
    }
}
