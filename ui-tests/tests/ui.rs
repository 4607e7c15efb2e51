//! Misuse of `#[hot_module]` and `hot_fn!` must give short errors spanned on the user's
//! tokens. One misuse per file in `ui/fail`, with its expected `.stderr`; `ui/pass` holds
//! what must compile.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
