//! Expands `hot_fn!(module.method(args...))`.
//!
//! The call becomes `module.__hot_proxy().method(args...)`: a call of an ordinary inherent
//! method that `#[hot_module]` generated with the user's own signature, so the compiler checks
//! the method name, the argument count and every argument type against the module crate.
//! `__hot_proxy` is spanned on the receiver and its call parentheses on the method, so an error
//! blamed on the proxy (the bound that refuses a method without `pub`) underlines
//! `module.method`.

use proc_macro2::TokenStream;
use quote::quote_spanned;
use syn::spanned::Spanned;
use syn::{Expr, ExprMethodCall};

pub(crate) fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let expr: Expr = syn::parse2(input).map_err(|err| {
        syn::Error::new(
            err.span(),
            "expected a method call on a hot module, like `hot_fn!(game.tick(0.016))`",
        )
    })?;
    let Expr::MethodCall(call) = expr else {
        return Err(syn::Error::new_spanned(
            expr,
            "expected a method call on a hot module, like `hot_fn!(game.tick(0.016))`",
        ));
    };
    let ExprMethodCall {
        receiver,
        method,
        turbofish,
        args,
        ..
    } = call;
    if let Some(turbofish) = turbofish {
        return Err(syn::Error::new_spanned(
            turbofish,
            "hot methods are never generic; remove the turbofish",
        ));
    }
    let proxy = quote_spanned!(receiver.span()=> (#receiver).__hot_proxy);
    let proxy = quote_spanned!(method.span()=> #proxy());
    Ok(quote_spanned!(method.span()=> #proxy.#method(#args)))
}

#[cfg(test)]
mod tests {
    use super::expand;
    use quote::quote;

    #[test]
    fn method_call_goes_through_the_proxy() {
        let out = expand(quote!(game.tick(0.016, x))).unwrap().to_string();
        assert_eq!(out, "(game) . __hot_proxy () . tick (0.016 , x)");
    }

    #[test]
    fn non_call_is_an_error() {
        let err = expand(quote!(game)).unwrap_err().to_string();
        assert!(err.contains("expected a method call"), "{err}");
    }

    #[test]
    fn turbofish_is_an_error() {
        let err = expand(quote!(game.tick::<u8>(1))).unwrap_err().to_string();
        assert!(err.contains("never generic"), "{err}");
    }
}
