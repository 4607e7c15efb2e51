//! `#[derive(Rehome)]`: rebuilds a value returned by a module field by field, so that every
//! allocation it owns is released through the host's code rather than the module's.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields};

pub(crate) fn derive(mut input: DeriveInput) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    for param in input.generics.type_params_mut() {
        param.bounds.push(syn::parse_quote!(::hotreload::Rehome));
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
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
            return Err(syn::Error::new_spanned(
                data.union_token,
                "Rehome cannot be derived for a union; implement it by hand",
            ));
        }
    };
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::hotreload::Rehome for #ident #ty_generics #where_clause {
            fn rehome(self) -> Self {
                #body
            }
        }
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
