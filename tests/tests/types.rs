//! Ordinary Rust types crossing a real reload boundary both ways: strings (non-ASCII),
//! vectors (empty and large), slices, boxes, tuples, nested options and results.

use hotreload::hot_fn;
use hotreload_tests::{Sandbox, variants};

#[test]
fn ordinary_types_cross_both_ways() {
    let sandbox = Sandbox::new(variants!());
    // No history: a replaced version is closed at once.
    let (reloader, module) =
        sandbox.register_with("v1", hotreload::ModuleOptions::new().history(0));

    let words = vec!["Grüße".to_owned(), "日本語".to_owned(), "🦀".to_owned()];
    let joined: String = hot_fn!(module.join(words.clone(), " · ")).unwrap();
    assert_eq!(joined, "Grüße · 日本語 · 🦀");
    assert_eq!(hot_fn!(module.join(Vec::new(), ",")).unwrap(), "");
    assert_eq!(hot_fn!(module.snapshot()).unwrap().label.as_str(), "");

    for value in [
        None,
        Some(Ok(Vec::new())),
        Some(Ok(vec![1, u64::MAX, 3])),
        Some(Err("ünïcödé error".to_owned())),
    ] {
        assert_eq!(hot_fn!(module.echo_nested(value.clone())).unwrap(), value);
    }

    let bytes: Vec<u8> = (0..=255).collect();
    let (chars, sum, doubled) =
        hot_fn!(module.measure(("añb".to_owned(), 2), &bytes, Box::new(-21))).unwrap();
    assert_eq!((chars, sum, *doubled), (5, 255 * 256 / 2, -42));
    let (_, empty_sum, _) = hot_fn!(module.measure((String::new(), 0), &[], Box::new(0))).unwrap();
    assert_eq!(empty_sum, 0);

    let large: Vec<u64> = hot_fn!(module.sequence(1_000_000)).unwrap();
    assert_eq!(large.len(), 1_000_000);
    assert_eq!(large[999_999], 999_999);

    // Values returned by a version stay valid after it is replaced and closed.
    let kept = hot_fn!(module.join(words, "/")).unwrap();
    sandbox.install("v2");
    let report = reloader.reload_module("counter").unwrap();
    assert_eq!(
        report.closed.len(),
        1,
        "the version that made them is closed"
    );
    assert_eq!(report.closed[0].still_mapped, Some(false), "and unmapped");
    assert_eq!(kept, "Grüße/日本語/🦀");
    assert_eq!(large.iter().sum::<u64>(), 999_999 * 1_000_000 / 2);
}
