//! Procedural macros for `hotreload`. Use them through the `hotreload` crate, which re-exports
//! them and documents them; the generated code reaches the runtime only through
//! `::hotreload::__private`.

mod ast;
mod attr;
mod check;
mod convert;
mod expand;
mod hot_fn;
mod migrate;
mod rehome;

use proc_macro::TokenStream;

/// Turns an inherent impl block into a hot-reloadable module. Documented in `hotreload`.
#[proc_macro_attribute]
pub fn hot_module(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::hot_module(args.into(), input.into()).into()
}

/// Calls a method of a hot module through the version loaded now. Documented in `hotreload`.
#[proc_macro]
pub fn hot_fn(input: TokenStream) -> TokenStream {
    hot_fn::expand(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `hotreload::Rehome` for a type returned by a hot module. Documented in `hotreload`.
#[proc_macro_derive(Rehome)]
pub fn derive_rehome(input: TokenStream) -> TokenStream {
    rehome::derive(syn::parse_macro_input!(input as syn::DeriveInput))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
