//! Looking at the live system: per-version metrics counted on real calls, and the status
//! report.

use abi_stable::std_types::RString;
use hotreload::{MetricsConfig, ModuleOptions, hot_fn};
use hotreload_tests::{Sandbox, variants};

#[test]
fn metrics_count_every_call_error_and_panic_of_each_version() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    for n in 0..100 {
        hot_fn!(module.add(n)).unwrap();
    }
    for b in 0..30 {
        let _ = hot_fn!(module.divide(60, b % 3)).unwrap();
    }
    for _ in 0..2 {
        hot_fn!(module.explode(RString::from("on purpose"))).unwrap_err();
    }

    let metrics = reloader
        .metrics("counter")
        .unwrap()
        .expect("metrics are on");
    assert_eq!(metrics.generation, 1);
    let add = metrics.method("add").unwrap();
    assert_eq!((add.calls, add.errors, add.panics), (100, 0, 0));
    // The first 256 calls of each method on a thread are all timed.
    assert_eq!(add.latency.samples(), 100);
    let p50 = add.latency.quantile(0.5).unwrap();
    assert!(p50 <= add.latency.quantile(0.99).unwrap());
    assert!(add.latency.quantile(0.99).unwrap() <= add.latency.max().unwrap());
    let divide = metrics.method("divide").unwrap();
    assert_eq!((divide.calls, divide.errors, divide.panics), (30, 10, 0));
    let explode = metrics.method("explode").unwrap();
    assert_eq!((explode.calls, explode.errors, explode.panics), (2, 0, 2));
    assert_eq!(metrics.calls(), 132);

    // A reload starts the new version's counts at zero; the replaced version keeps its own.
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    for n in 0..7 {
        hot_fn!(module.add(n)).unwrap();
    }
    let serving = reloader.metrics("counter").unwrap().unwrap();
    assert_eq!(serving.generation, 2);
    assert_eq!(serving.method("add").unwrap().calls, 7);
    assert_eq!(serving.calls(), 7);

    let status = reloader.status().unwrap();
    let counter = &status.modules[0];
    assert_eq!(counter.name, "counter");
    assert_eq!(counter.serving.as_ref().unwrap().info.generation, 2);
    let kept = &counter.kept[0];
    assert_eq!(kept.info.generation, 1);
    let kept_metrics = kept.metrics.as_ref().unwrap();
    assert_eq!(kept_metrics.method("add").unwrap().calls, 100);
    assert_eq!(kept_metrics.panics(), 2);
    assert!(counter.serving.as_ref().unwrap().built_at.is_some());

    let shown = status.to_string();
    assert!(
        shown.contains("counter: load #2 serving (API v1, state v1)"),
        "{shown}"
    );
    assert!(shown.contains("kept      load #1 (for rollback"), "{shown}");
    assert!(shown.contains("132 calls, 10 errors, 2 panics"), "{shown}");
    let add_line = shown.lines().find(|l| l.contains(" add ")).unwrap();
    assert!(
        add_line.contains("7 calls") && add_line.contains("p50"),
        "{shown}"
    );
}

#[test]
fn calls_from_many_threads_add_up_and_sampling_times_fewer() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register_with(
        "v1",
        ModuleOptions::new().metrics(MetricsConfig::sampled(0, 8)),
    );
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..1000 {
                    hot_fn!(module.calls()).unwrap();
                }
            });
        }
    });
    let calls = reloader.metrics("counter").unwrap().unwrap();
    let calls = calls.method("calls").unwrap();
    assert_eq!(calls.calls, 4000);
    // One call in 8 on each thread (a thread that ended hands its slot and count on).
    let samples = calls.latency.samples();
    assert!((500..=504).contains(&samples), "{samples} timed of 4000");
}

#[test]
fn with_metrics_off_nothing_is_counted() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) =
        sandbox.register_with("v1", ModuleOptions::new().metrics(MetricsConfig::off()));
    hot_fn!(module.add(1)).unwrap();
    assert!(reloader.metrics("counter").unwrap().is_none());
    let status = reloader.status().unwrap();
    assert!(
        status.modules[0]
            .serving
            .as_ref()
            .unwrap()
            .metrics
            .is_none()
    );
}

#[test]
fn the_status_names_the_last_refusal() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    hot_fn!(module.add(1)).unwrap();
    sandbox.install("bad_signature");
    let err = reloader.reload_module("counter").unwrap_err();
    let status = reloader.status().unwrap();
    let refusal = status.modules[0].last_refusal.as_ref().expect("a refusal");
    assert_eq!(refusal.reason, err.to_string());
    let shown = status.to_string();
    assert!(shown.contains("refused"), "{shown}");
    assert!(shown.contains("method 'add'"), "{shown}");
}

/// A subscriber writing plain text into a buffer, with the level filter given, installed for
/// this thread until the guard drops.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn module_events_reach_the_host_subscriber_with_module_and_generation_before_and_after_a_reload() {
    let (captured, _guard) = capture(tracing::Level::INFO);
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    {
        let request = tracing::info_span!("request", id = 7);
        let _entered = request.enter();
        hot_fn!(module.log_lines(3)).unwrap();
    }
    let text = captured.text();
    let event = text
        .lines()
        .find(|l| l.contains("counted to 3"))
        .unwrap_or_else(|| panic!("no module event in the host's output:\n{text}"));
    // Under the host's span and the module's own, with the module's fields and ours.
    assert!(event.contains("request{id=7}:counting{n=3"), "{event}");
    assert!(
        event.contains("module=counter") || event.contains("module=\"counter\""),
        "{event}"
    );
    assert!(event.contains("generation=1"), "{event}");
    assert!(event.contains("tag=1"), "{event}");
    assert!(event.contains(" INFO "), "{event}");
    // The module's target (the variant's crate), as if the host had emitted it.
    assert!(event.contains("}: counter"), "{event}");
    // `log` records too.
    let record = text
        .lines()
        .find(|l| l.contains("a log record about 3"))
        .unwrap_or_else(|| panic!("no `log` record in the host's output:\n{text}"));
    assert!(
        record.contains(" WARN ") && record.contains("generation=1"),
        "{record}"
    );
    // Filtered out by the host's level.
    assert!(!text.contains("a debug line"), "{text}");

    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    hot_fn!(module.log_lines(4)).unwrap();
    let text = captured.text();
    let event = text
        .lines()
        .find(|l| l.contains("counted to 4"))
        .unwrap_or_else(|| panic!("no event from the new version:\n{text}"));
    assert!(
        event.contains("generation=2") && event.contains("tag=2"),
        "{event}"
    );
    assert!(!text.contains("a debug line"), "{text}");
}

#[test]
fn module_events_follow_the_host_filter() {
    let (captured, _guard) = capture(tracing::Level::DEBUG);
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module) = sandbox.register("v1");
    hot_fn!(module.log_lines(5)).unwrap();
    let text = captured.text();
    assert!(text.contains("a debug line"), "{text}");
    drop(_guard);

    let (captured, _guard) = capture(tracing::Level::WARN);
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module) = sandbox.register("v1");
    hot_fn!(module.log_lines(6)).unwrap();
    let text = captured.text();
    assert!(!text.contains("counted to 6"), "{text}");
    assert!(!text.contains("a debug line"), "{text}");
    assert!(text.contains("a log record about 6"), "{text}");
}

#[test]
fn exported_metrics_equal_the_calls_made() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    for n in 0..25 {
        hot_fn!(module.add(n)).unwrap();
    }
    for b in [1, 0, 0] {
        let _ = hot_fn!(module.divide(1, b)).unwrap();
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || reloader.export_metrics()).unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, method: &str, quantile: Option<&str>| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                let key = key.key();
                let label = |k: &str| key.labels().find(|l| l.key() == k).map(|l| l.value());
                key.name() == name
                    && label("module") == Some("counter")
                    && label("method").is_none_or(|m| m == method)
                    && label("generation").is_none_or(|g| g == "1")
                    && label("quantile") == quantile
            })
            .map(|(.., value)| value)
            .unwrap_or_else(|| panic!("no {name} for {method} in {snapshot:#?}"))
    };
    use hotreload::metric_names::*;
    assert_eq!(value(CALLS, "add", None), &DebugValue::Counter(25));
    assert_eq!(value(ERRORS, "add", None), &DebugValue::Counter(0));
    assert_eq!(value(CALLS, "divide", None), &DebugValue::Counter(3));
    assert_eq!(value(ERRORS, "divide", None), &DebugValue::Counter(2));
    assert_eq!(value(SERVING, "", None), &DebugValue::Gauge(1.0.into()));
    let DebugValue::Gauge(p50) = value(LATENCY, "add", Some("0.5")) else {
        panic!("the latency is a gauge");
    };
    assert!(p50.0 > 0.0 && p50.0 < 1.0, "{p50}");
}

#[test]
fn a_module_registered_without_forwarding_keeps_its_logging_to_itself() {
    let (captured, _guard) = capture(tracing::Level::TRACE);
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module) = sandbox.register_with("v1", ModuleOptions::new().forward_logs(false));
    hot_fn!(module.log_lines(8)).unwrap();
    let text = captured.text();
    assert!(!text.contains("counted to 8"), "{text}");
    assert!(!text.contains("a log record about 8"), "{text}");
}
