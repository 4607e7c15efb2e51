//! Ordinary Rust types crossing a real reload boundary both ways: strings (non-ASCII),
//! vectors (empty and large), slices, boxes, tuples, nested options and results, hash and
//! sorted maps (empty and large, with a hasher of their own).

use std::collections::{BTreeMap, HashMap};

use greeter::{FixedHasher, Greeter};
use hotreload::{HotReloader, ModuleOptions, hot_fn};
use hotreload_tests::{Sandbox, greeter_variants, variants};

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

#[test]
fn maps_cross_both_ways_and_outlive_their_version() {
    let variants = greeter_variants(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let artifact = dir.path().join(hotreload::library_file_name("greeter"));
    hotreload::harness::install(variants.artifact("v1"), &artifact).expect("install v1");
    let reloader = HotReloader::new();
    // No history: a replaced version is closed at once.
    let greeter = reloader
        .register_with::<Greeter>(ModuleOptions::new().artifact(&artifact).history(0))
        .unwrap_or_else(|err| panic!("registering the greeter failed: {err}"));

    // A few thousand entries, non-ASCII keys, an empty key.
    let mut words: HashMap<String, u32> = (0..4000).map(|i| (format!("wört{i}·日本"), i)).collect();
    words.extend([
        ("🦀".to_owned(), 7),
        ("Grüße".to_owned(), 3),
        (String::new(), 0),
    ]);
    let tally: BTreeMap<String, u64> = hot_fn!(greeter.tally(words.clone())).unwrap();
    let expected: BTreeMap<String, u64> = words
        .iter()
        .map(|(word, &count)| (word.clone(), u64::from(count)))
        .collect();
    assert_eq!(tally.len(), 4003);
    assert_eq!(tally, expected);
    assert_eq!(tally.first_key_value(), Some((&String::new(), &0)));
    assert_eq!(tally.last_key_value(), Some((&"🦀".to_owned(), &7)));

    let lengths: HashMap<u64, Vec<String>, FixedHasher> =
        hot_fn!(greeter.by_length(tally.clone())).unwrap();
    let mut expected_lengths: HashMap<u64, Vec<String>, FixedHasher> = HashMap::default();
    for word in tally.keys() {
        expected_lengths
            .entry(word.chars().count() as u64)
            .or_default()
            .push(word.clone());
    }
    assert_eq!(lengths, expected_lengths);
    assert_eq!(lengths[&0], [""]);
    assert_eq!(lengths[&1], ["🦀"]);
    assert_eq!(lengths[&5], ["Grüße"]);

    // Empty maps, both ways.
    assert_eq!(
        hot_fn!(greeter.tally(HashMap::new())).unwrap(),
        BTreeMap::new()
    );
    assert!(
        hot_fn!(greeter.by_length(BTreeMap::new()))
            .unwrap()
            .is_empty()
    );

    // Maps returned by a version stay valid after it is replaced and closed, and the next
    // version's conversions are its own.
    hotreload::harness::install(variants.artifact("v2"), &artifact).expect("install v2");
    let report = reloader.reload_module("greeter").unwrap();
    assert_eq!(
        report.closed.len(),
        1,
        "the version that made them is closed"
    );
    assert_eq!(report.closed[0].still_mapped, Some(false), "and unmapped");
    assert_eq!(tally, expected);
    assert_eq!(lengths, expected_lengths);
    let doubled = hot_fn!(greeter.tally(HashMap::from([("ß".to_owned(), 21)]))).unwrap();
    assert_eq!(doubled, BTreeMap::from([("ß".to_owned(), 42)]));
}
