//! `#[derive(Rehome)]`: rebuilds a value returned by a module field by field, so that every
//! allocation it owns is released through the host's code rather than the module's.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields};

use crate::check::Errors;

pub(crate) fn derive(mut input: DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    // A value that borrows can point into the module's image, which no rebuilding can fix.
    for lifetime in input.generics.lifetimes() {
        errors.spanned(
            lifetime,
            "Rehome cannot be derived for a type with lifetime parameters: a borrowed value can \
             point into the module that made it; hold owned values (`RString`, `RVec<T>`)",
        );
    }
    let ident = &input.ident;
    let body = match &input.data {
        Data::Struct(data) => {
            let (pattern, rebuild) = fields(quote!(#ident), &data.fields);
            quote!(let #pattern = self; #rebuild)
        }
        Data::Enum(data) => {
            let arms = data.variants.iter().map(|variant| {
                let name = &variant.ident;
                let (pattern, rebuild) = fields(quote!(#ident::#name), &variant.fields);
                quote!(#pattern => #rebuild,)
            });
            quote!(match self { #(#arms)* })
        }
        Data::Union(data) => {
            errors.spanned(
                data.union_token,
                "Rehome cannot be derived for a union: which field to rebuild is unknown",
            );
            TokenStream::new()
        }
    };
    errors.into_result()?;

    for param in input.generics.type_params_mut() {
        param.bounds.push(syn::parse_quote!(::hotreload::Rehome));
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // SAFETY (of the generated `unsafe impl`): the value is destructured and rebuilt from fields
    // that each went through their own `Rehome` (the compiler requires every field type, and
    // every type parameter, to implement it), and the type has no lifetime parameter, so the
    // result holds nothing from the old value but what those impls rebuilt.
    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            #[allow(clippy::undocumented_unsafe_blocks)]
            unsafe impl #impl_generics ::hotreload::Rehome for #ident #ty_generics #where_clause {
                fn rehome(self) -> Self {
                    #body
                }
            }
        };
    })
}

/// A destructuring pattern and the expression that rebuilds the value from its bindings.
fn fields(path: TokenStream, fields: &Fields) -> (TokenStream, TokenStream) {
    match fields {
        Fields::Named(named) => {
            let names: Vec<_> = named
                .named
                .iter()
                .filter_map(|f| f.ident.as_ref())
                .collect();
            (
                quote!(#path { #(#names),* }),
                quote!(#path { #(#names: ::hotreload::Rehome::rehome(#names)),* }),
            )
        }
        Fields::Unnamed(unnamed) => {
            let names: Vec<_> = (0..unnamed.unnamed.len())
                .map(|i| format_ident!("__field{i}"))
                .collect();
            (
                quote!(#path ( #(#names),* )),
                quote!(#path ( #(::hotreload::Rehome::rehome(#names)),* )),
            )
        }
        Fields::Unit => (path.clone(), path),
    }
}

#[cfg(test)]
mod tests {
    /// The derive's output, or every error message it gave.
    fn derive(item: &str) -> Result<String, Vec<String>> {
        super::derive(syn::parse_str(item).unwrap())
            .map(|tokens| tokens.to_string())
            .map_err(|err| err.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn the_impl_is_unsafe_derived_and_bounds_type_parameters() {
        let out = derive("struct Pair<T> { a: T, b: RString }").unwrap();
        assert!(out.contains("# [automatically_derived]"), "{out}");
        assert!(
            out.contains(
                "unsafe impl < T : :: hotreload :: Rehome > :: hotreload :: Rehome for Pair < T >"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "Pair { a : :: hotreload :: Rehome :: rehome (a) , b : :: hotreload :: Rehome :: rehome (b) }"
            ),
            "{out}"
        );
    }

    #[test]
    fn every_variant_is_rebuilt() {
        let out = derive("enum Shape { Dot(Point), Named { name: RString }, Nothing }").unwrap();
        for arm in [
            "Shape :: Dot (__field0) => Shape :: Dot (:: hotreload :: Rehome :: rehome (__field0))",
            "Shape :: Named { name } => Shape :: Named { name : :: hotreload :: Rehome :: rehome (name) }",
            "Shape :: Nothing => Shape :: Nothing",
        ] {
            assert!(out.contains(arm), "missing {arm:?} in {out}");
        }
    }

    #[test]
    fn lifetimes_and_unions_are_refused_together() {
        let errors = derive("union Borrowed<'a, 'b> { a: &'a u8, b: &'b u8 }").unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("lifetime parameters"), "{errors:?}");
        assert!(errors[1].contains("lifetime parameters"), "{errors:?}");
        assert!(
            errors[2].contains("cannot be derived for a union"),
            "{errors:?}"
        );
        let errors = derive("struct Name<'a> { name: RStr<'a> }").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
