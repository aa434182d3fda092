use super::*;
use serde_json::json;

fn summary(e: &Event) -> &Summary {
    match &e.what {
        Some(What::Summary(s)) => s,
        other => panic!("not a summary: {other:?}"),
    }
}

#[test]
fn a_session_writes_scalars_images_and_text_that_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let w = EventWriter::create(dir.path(), None).unwrap();
    w.record(&json!({"step": 5, "loss": 0.25, "lr": 1e-4, "bad": null, "note": "x", "q": [1, 2]}))
        .unwrap();
    w.image(
        5,
        "samples",
        &RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3])),
    )
    .unwrap();
    w.text(0, "config", "[run]\nsteps = 5").unwrap();
    w.flush().unwrap();
    let files = event_files(dir.path()).unwrap();
    assert_eq!(
        files,
        vec![dir.path().join("events.out.tfevents.0000.ddpm-rs")]
    );
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
    let scalars = summary(&events[1]);
    assert_eq!(events[1].step, 5);
    let tags: Vec<&str> = scalars.value.iter().map(|v| v.tag.as_str()).collect();
    assert_eq!(tags, ["bad", "loss", "lr", "q/0", "q/1"]);
    match scalars.value[0].kind {
        Some(Kind::SimpleValue(v)) => assert!(v.is_nan()),
        ref k => panic!("{k:?}"),
    }
    assert_eq!(scalars.value[1].kind, Some(Kind::SimpleValue(0.25)));
    let Some(Kind::Image(img)) = &summary(&events[2]).value[0].kind else {
        panic!("no image")
    };
    assert_eq!((img.width, img.height, img.colorspace), (3, 2, 3));
    let decoded = image::load_from_memory(&img.encoded_image_string).unwrap();
    assert_eq!(decoded.to_rgb8().get_pixel(2, 1).0, [1, 2, 3]);
    let text = &summary(&events[3]).value[0];
    let plugin = text
        .metadata
        .as_ref()
        .unwrap()
        .plugin_data
        .as_ref()
        .unwrap();
    assert_eq!(plugin.plugin_name, "text");
    let Some(Kind::Tensor(t)) = &text.kind else {
        panic!("no tensor")
    };
    assert_eq!(t.string_val, vec![b"[run]\nsteps = 5".to_vec()]);
}

#[test]
fn a_resumed_session_writes_the_next_file_with_a_session_start() {
    let dir = tempfile::tempdir().unwrap();
    drop(EventWriter::create(dir.path(), None).unwrap());
    let w = EventWriter::create(dir.path(), Some(11)).unwrap();
    w.scalars(12, &[("loss", 1.0)]).unwrap();
    drop(w);
    let files = event_files(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[1].ends_with("events.out.tfevents.0001.ddpm-rs"));
    let events = read_events(&files[1]).unwrap();
    assert_eq!(events.len(), 3, "flushed on drop");
    assert_eq!(events[1].step, 11);
    let Some(What::SessionLog(log)) = &events[1].what else {
        panic!("{:?}", events[1])
    };
    assert_eq!(log.status, SessionStatus::Start as i32);
}

#[test]
fn a_flipped_byte_is_an_error_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let w = EventWriter::create(dir.path(), None).unwrap();
    w.scalars(1, &[("loss", 1.0)]).unwrap();
    let path = w.path().to_path_buf();
    drop(w);
    let mut bytes = fs::read(&path).unwrap();
    let first = record::unframe(&bytes).unwrap()[0].len() as u64 + 16;
    let last = bytes.len() - 6;
    bytes[last] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    match read_events(&path).unwrap_err() {
        TrainError::EventFile {
            path: p, offset, ..
        } => {
            assert_eq!(p, path);
            assert_eq!(offset, first);
        }
        e => panic!("{e}"),
    }
}
