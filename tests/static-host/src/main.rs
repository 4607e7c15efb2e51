//! The same host code as with hot reloading, built with the `static` feature: calls go to the
//! counter's rlib directly and no library is loaded. Prints what it checked; exits non-zero on
//! any difference.

use counter::Counter;
use hotreload::{HotError, HotReloader, ModuleFault, hot_fn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reloader = HotReloader::new();
    let counter = reloader.register::<Counter>()?;
    let local = reloader.register_local::<Counter>().err();
    assert!(
        matches!(local, Some(HotError::AlreadyRegistered { .. })),
        "one registration per module: {local:?}"
    );

    assert_eq!(hot_fn!(counter.add(20))?, 20);
    assert_eq!(hot_fn!(counter.add(22))?, 42);
    assert_eq!(hot_fn!(counter.build_tag())?, 1);
    let joined = hot_fn!(counter.join(vec!["a".into(), "ü".into()], "+"))?;
    assert_eq!(joined, "a+ü");
    // The module's panic is contained; keep it off the output, then restore the hook.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let err = hot_fn!(counter.explode("on purpose".into())).unwrap_err();
    std::panic::set_hook(hook);
    assert!(matches!(err, HotError::Call { fault: ModuleFault::Panicked(_), .. }), "{err:?}");
    assert_eq!(hot_fn!(counter.calls())?, 2, "the state survived the panic");
    let reload = reloader.reload_module("counter").unwrap_err();
    assert!(matches!(reload, HotError::Linked { .. }), "{reload:?}");
    assert!(counter.version().is_none());

    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let loaded: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.find('/').map(|i| &l[i..]))
        // A module library, or a shadow copy of one (`<dir>/counter-<n>-libcounter.so`).
        .filter(|path| path.contains("counter") && path.contains(".so"))
        .collect();
    assert!(loaded.is_empty(), "nothing loaded: {loaded:?}");
    println!("static host: calls work, nothing loaded");
    Ok(())
}
