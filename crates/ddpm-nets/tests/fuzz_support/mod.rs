//! Mutations for the proptest-driven fuzz tests of the readers of outside data (issue 16): byte
//! flips, overwrites with "interesting" words (huge sizes, negative numbers), truncation,
//! insertion, removal and duplication of byte ranges, and token-level edits of text formats.
//! Shared by `ddpm-nets` and `ddpm-train` (`#[path]`-included).
#![allow(dead_code)]

use proptest::prelude::*;

/// The number of cases of a fuzz target: proptest's standard `PROPTEST_CASES` when set, else
/// `default` (kept small so that the suite stays within its CI budget).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A proptest config with [`cases`] cases and no shrinking marathon. The cases are drawn from a
/// fixed seed unless proptest's `PROPTEST_RNG_SEED` sets another, so that CI runs the same cases
/// every time (a long campaign sets a seed of its own).
pub fn config(default: u32) -> ProptestConfig {
    let base = ProptestConfig::with_cases(cases(default));
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(0x0d0d_5eed)
    };
    ProptestConfig {
        max_shrink_iters: 256,
        // Crashes become plain `#[test]` regression cases with the exact input, not seed files.
        failure_persistence: None,
        rng_seed,
        ..base
    }
}

/// Words that break size fields: zero, all ones, 2^31, 2^32, 2^40, 2^63, in either byte order.
const WORDS: [u64; 8] = [
    0,
    u64::MAX,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 63,
    0x7fff_ffff,
    0xffff_ffff,
];

/// One edit of a byte string; positions are taken modulo the current length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(usize, u8),
    /// Overwrite one byte.
    Set(usize, u8),
    /// Overwrite 1, 2, 4 or 8 bytes with a word of [`WORDS`] (little- or big-endian).
    Word(usize, usize, usize, bool),
    /// Cut the file at this length.
    Truncate(usize),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Remove up to this many bytes.
    Remove(usize, usize),
    /// Repeat a range of up to this many bytes in place.
    Duplicate(usize, usize),
}

/// One random [`Mutation`].
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<usize>(), 0..WORDS.len(), 0..4usize, any::<bool>())
            .prop_map(|(i, w, k, be)| Mutation::Word(i, w, 1 << k, be)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

/// Between 1 and `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=max)
}

/// Applies `muts` to a copy of `seed`.
pub fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        match m {
            Mutation::Flip(i, mask) => b[*i % len] ^= mask,
            Mutation::Set(i, v) => b[*i % len] = *v,
            Mutation::Word(i, w, n, be) => {
                let bytes = if *be {
                    WORDS[*w].to_be_bytes()[8 - n..].to_vec()
                } else {
                    WORDS[*w].to_le_bytes()[..*n].to_vec()
                };
                let at = *i % len;
                let end = (at + n).min(len);
                b[at..end].copy_from_slice(&bytes[..end - at]);
            }
            Mutation::Truncate(i) => b.truncate(*i % len),
            Mutation::Insert(i, bytes) => {
                let at = *i % (len + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = *i % len;
                b.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(i, n) => {
                let at = *i % len;
                let piece = b[at..(at + n).min(len)].to_vec();
                b.splice(at..at, piece);
            }
        }
    }
    b
}

/// Values that break parsers of text formats (JSON, TOML): huge and negative numbers, NaN and
/// infinities, empty strings and containers, wrong types, deep nesting.
pub fn bad_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "-0",
            "1",
            "2",
            "3",
            "1.5",
            "-1e9",
            "1e308",
            "1e400",
            "-1e400",
            "4294967296",
            "1099511627776",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
            "-9223372036854775808",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "Infinity",
            "\"\"",
            "\"NaN\"",
            "null",
            "true",
            "false",
            "[]",
            "{}",
            "[1e400]",
            "[-1]",
            "\"linear\"",
            "\"x\"",
            "[0, 0]",
            "''",
            "'a'",
            "{a = 1}",
        ])
        .prop_map(str::to_string),
        (1..3000usize).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        (1..3000usize).prop_map(|d| "{\"a\":".repeat(d) + "1" + &"}".repeat(d)),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:e}")),
    ]
}

/// The byte ranges of the value-like tokens of a text: quoted strings and runs of
/// `[A-Za-z0-9_.+-]`.
fn tokens(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || b"_.+-".contains(&c);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            i = (i + 1).min(b.len());
            out.push((start, i));
        } else if word(b[i]) {
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Replaces the token at `at` (modulo the number of tokens) of `text` with `with`.
pub fn replace_token(text: &str, at: usize, with: &str) -> String {
    let toks = tokens(text);
    if toks.is_empty() {
        return with.to_string();
    }
    let (s, e) = toks[at % toks.len()];
    format!("{}{with}{}", &text[..s], &text[e..])
}

/// A text mutated by up to `max` token replacements and then up to `max` byte mutations (the
/// result may be invalid UTF-8, as a corrupt file can be).
pub fn mutated_text(seed: String, max: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((any::<usize>(), bad_token()), 0..=max),
        prop::collection::vec(mutation(), 0..=max),
    )
        .prop_map(move |(edits, muts)| {
            let text = edits
                .iter()
                .fold(seed.clone(), |t, (i, w)| replace_token(&t, *i, w));
            apply(text.as_bytes(), &muts)
        })
}

#[test]
fn mutations_change_the_seed_and_stay_in_bounds() {
    let seed = b"0123456789".to_vec();
    let m = [Mutation::Word(1, 1, 8, false), Mutation::Truncate(13)];
    let out = apply(&seed, &m);
    assert!(
        out.len() < seed.len() && out != seed[..out.len()],
        "{out:?}"
    );
    assert_eq!(
        replace_token("{\"a\": 12, \"b\": x}", 1, "NaN"),
        "{\"a\": NaN, \"b\": x}"
    );
}
