//! trybuild compile-fail tests for misuse of the hotreload macros; see `tests/ui.rs`.
