//! Ordinary Rust types in hot method signatures, and their FFI-safe forms.
//!
//! `String`, `&str`, `Vec<T>`, `&[T]`, `Option<T>`, `Result<T, E>`, `Box<T>` and tuples of up
//! to four cross the boundary as abi_stable's `RString`, `RStr`, `RVec`, `RSlice`, `ROption`,
//! `RResult`, `RBox` and `Tuple2..4`. `HashMap<K, V>` (with or without a hasher parameter)
//! and `BTreeMap<K, V>` cross as the list of their entries, `RVec<Tuple2<K, V>>`, and are
//! collected back into the type the signature names: no hasher crosses, each side builds its
//! own (a custom one included). The export table is written with the FFI-safe forms (so the
//! layout check covers them); the generated proxy converts arguments on the host's side and
//! results back, the generated shim does the reverse in the module. Owned buffers move rather
//! than copy where abi_stable allows (`String` <-> `RString` keeps its allocation).
//! Conversions nest, so keys and values are converted too. Types are recognised by their last
//! path segment; anything else crosses as it is.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};
use syn::{GenericArgument, PathArguments, Type};

/// What a type is, as far as conversion goes.
enum Kind<'a> {
    String,
    Str,
    Slice(&'a Type),
    Vec(&'a Type),
    Option(&'a Type),
    Result(&'a Type, &'a Type),
    Box(&'a Type),
    /// `HashMap<K, V>`, `HashMap<K, V, S>` or `BTreeMap<K, V>`: keys, values.
    Map(&'a Type, &'a Type),
    Tuple(Vec<&'a Type>),
    /// Crosses as it is (primitives, abi_stable types, the user's `StableAbi` types).
    Plain,
}

fn generic_args(args: &PathArguments) -> Vec<&Type> {
    match args {
        PathArguments::AngleBracketed(angle) => angle
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn kind(ty: &Type) -> Kind<'_> {
    match ty {
        Type::Paren(inner) => kind(&inner.elem),
        Type::Group(inner) => kind(&inner.elem),
        Type::Reference(r) if r.mutability.is_none() => match &*r.elem {
            Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => Kind::Str,
            Type::Slice(slice) => Kind::Slice(&slice.elem),
            _ => Kind::Plain,
        },
        Type::Tuple(tuple) if (2..=4).contains(&tuple.elems.len()) => {
            Kind::Tuple(tuple.elems.iter().collect())
        }
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return Kind::Plain;
            };
            let args = generic_args(&last.arguments);
            match (last.ident.to_string().as_str(), args.as_slice()) {
                ("String", []) => Kind::String,
                ("Vec", [t]) => Kind::Vec(t),
                ("Option", [t]) => Kind::Option(t),
                ("Result", [t, e]) => Kind::Result(t, e),
                ("Box", [t]) => Kind::Box(t),
                ("HashMap", [k, v] | [k, v, _]) | ("BTreeMap", [k, v]) => Kind::Map(k, v),
                _ => Kind::Plain,
            }
        }
        _ => Kind::Plain,
    }
}

/// Whether `ty` crosses in another form.
pub(crate) fn needs_conversion(ty: &Type) -> bool {
    !matches!(kind(ty), Kind::Plain)
}

/// Why `ty` cannot be converted, if it cannot.
pub(crate) fn unsupported(ty: &Type) -> Option<String> {
    match kind(ty) {
        Kind::Slice(elem) if needs_conversion(elem) => Some(format!(
            "a slice of `{}` cannot cross the hot-reload boundary without copying; pass a \
             `Vec<{}>`",
            elem.to_token_stream(),
            elem.to_token_stream()
        )),
        Kind::Slice(elem) | Kind::Vec(elem) | Kind::Option(elem) | Kind::Box(elem) => {
            unsupported(elem)
        }
        Kind::Result(t, e) | Kind::Map(t, e) => unsupported(t).or_else(|| unsupported(e)),
        Kind::Tuple(elems) => elems.into_iter().find_map(unsupported),
        Kind::String | Kind::Str | Kind::Plain => None,
    }
}

/// The FFI-safe form of `ty`.
pub(crate) fn ffi_type(ty: &Type) -> TokenStream {
    let p = quote!(::hotreload::__private);
    match kind(ty) {
        Kind::String => quote!(#p::RString),
        Kind::Str => quote!(#p::RStr<'_>),
        Kind::Slice(elem) => quote!(#p::RSlice<'_, #elem>),
        Kind::Vec(t) => {
            let t = ffi_type(t);
            quote!(#p::RVec<#t>)
        }
        Kind::Option(t) => {
            let t = ffi_type(t);
            quote!(#p::ROption<#t>)
        }
        Kind::Result(t, e) => {
            let (t, e) = (ffi_type(t), ffi_type(e));
            quote!(#p::RResult<#t, #e>)
        }
        Kind::Box(t) => {
            let t = ffi_type(t);
            quote!(#p::RBox<#t>)
        }
        Kind::Map(k, v) => {
            let (k, v) = (ffi_type(k), ffi_type(v));
            quote!(#p::RVec<#p::Tuple2<#k, #v>>)
        }
        Kind::Tuple(elems) => {
            let name = format_ident!("Tuple{}", elems.len());
            let elems = elems.into_iter().map(ffi_type);
            quote!(#p::#name<#(#elems),*>)
        }
        Kind::Plain => ty.to_token_stream(),
    }
}

/// An expression converting `value` (of type `ty`) to its FFI-safe form.
pub(crate) fn to_ffi(value: TokenStream, ty: &Type) -> TokenStream {
    let p = quote!(::hotreload::__private);
    match kind(ty) {
        Kind::String => quote!(#p::RString::from(#value)),
        Kind::Str => quote!(#p::RStr::from_str(#value)),
        Kind::Slice(_) => quote!(#p::RSlice::from_slice(#value)),
        Kind::Vec(t) if !needs_conversion(t) => quote!(#p::RVec::from(#value)),
        Kind::Vec(t) => {
            let each = to_ffi(quote!(__x), t);
            quote!(#value.into_iter().map(|__x| #each).collect::<#p::RVec<_>>())
        }
        Kind::Option(t) => {
            let each = to_ffi(quote!(__x), t);
            quote!(#p::ROption::from(#value.map(|__x| #each)))
        }
        Kind::Result(t, e) => {
            let (ok, err) = (to_ffi(quote!(__x), t), to_ffi(quote!(__x), e));
            quote!(#p::RResult::from(#value.map(|__x| #ok).map_err(|__x| #err)))
        }
        Kind::Box(t) if !needs_conversion(t) => quote!(#p::RBox::new(*#value)),
        Kind::Box(t) => {
            // Bound first: `*x.into_iter()` would dereference the iterator, not the box.
            let inner = to_ffi(quote!(__x), t);
            quote!(#p::RBox::new({ let __x = *#value; #inner }))
        }
        Kind::Map(k, v) => {
            let (k, v) = (to_ffi(quote!(__k), k), to_ffi(quote!(__v), v));
            quote! {
                ::core::iter::Iterator::collect::<#p::RVec<_>>(
                    ::core::iter::Iterator::map(
                        ::core::iter::IntoIterator::into_iter(#value),
                        |(__k, __v)| #p::Tuple2(#k, #v),
                    )
                )
            }
        }
        Kind::Tuple(elems) => {
            let name = format_ident!("Tuple{}", elems.len());
            let vars: Vec<_> = (0..elems.len()).map(|i| format_ident!("__t{i}")).collect();
            let each = vars.iter().zip(&elems).map(|(v, t)| to_ffi(quote!(#v), t));
            quote!({ let (#(#vars),*) = #value; #p::#name(#(#each),*) })
        }
        Kind::Plain => value,
    }
}

/// An expression converting `value` (the FFI-safe form of `ty`) back to `ty`.
pub(crate) fn from_ffi(value: TokenStream, ty: &Type) -> TokenStream {
    let p = quote!(::hotreload::__private);
    match kind(ty) {
        Kind::String => quote!(#p::RString::into_string(#value)),
        Kind::Str => quote!(#p::RStr::as_str(&#value)),
        Kind::Slice(_) => quote!(#p::RSlice::as_slice(&#value)),
        Kind::Vec(t) if !needs_conversion(t) => quote!(#p::RVec::into_vec(#value)),
        Kind::Vec(t) => {
            let each = from_ffi(quote!(__x), t);
            quote!(#value.into_iter().map(|__x| #each).collect::<::std::vec::Vec<_>>())
        }
        Kind::Option(t) => {
            let each = from_ffi(quote!(__x), t);
            quote!(#p::ROption::into_option(#value).map(|__x| #each))
        }
        Kind::Result(t, e) => {
            let (ok, err) = (from_ffi(quote!(__x), t), from_ffi(quote!(__x), e));
            quote!(#p::RResult::into_result(#value).map(|__x| #ok).map_err(|__x| #err))
        }
        Kind::Box(t) => {
            let inner = from_ffi(quote!(#p::RBox::into_inner(#value)), t);
            quote!(::std::boxed::Box::new(#inner))
        }
        // Collected into the type as written, so its own hasher (or order) is rebuilt here.
        Kind::Map(k, v) => {
            let (k, v) = (from_ffi(quote!(__k), k), from_ffi(quote!(__v), v));
            quote! {
                ::core::iter::Iterator::collect::<#ty>(
                    ::core::iter::Iterator::map(
                        ::core::iter::IntoIterator::into_iter(#value),
                        |#p::Tuple2(__k, __v)| (#k, #v),
                    )
                )
            }
        }
        Kind::Tuple(elems) => {
            let name = format_ident!("Tuple{}", elems.len());
            let vars: Vec<_> = (0..elems.len()).map(|i| format_ident!("__t{i}")).collect();
            let each = vars
                .iter()
                .zip(&elems)
                .map(|(v, t)| from_ffi(quote!(#v), t));
            quote!({ let #p::#name(#(#vars),*) = #value; (#(#each),*) })
        }
        Kind::Plain => value,
    }
}

#[cfg(test)]
mod tests {
    use super::{ffi_type, from_ffi, to_ffi, unsupported};
    use quote::quote;

    fn ty(s: &str) -> syn::Type {
        syn::parse_str(s).unwrap()
    }

    fn compact(tokens: proc_macro2::TokenStream) -> String {
        tokens
            .to_string()
            .replace(":: hotreload :: __private :: ", "")
    }

    #[test]
    fn ordinary_types_map_to_abi_stable_ones() {
        assert_eq!(compact(ffi_type(&ty("String"))), "RString");
        assert_eq!(compact(ffi_type(&ty("&str"))), "RStr < '_ >");
        assert_eq!(
            compact(ffi_type(&ty("Option<Result<Vec<String>, String>>"))),
            "ROption < RResult < RVec < RString > , RString > >"
        );
        assert_eq!(
            compact(ffi_type(&ty("(u8, String)"))),
            "Tuple2 < u8 , RString >"
        );
        assert_eq!(compact(ffi_type(&ty("&[u32]"))), "RSlice < '_ , u32 >");
        assert_eq!(compact(ffi_type(&ty("Box<u64>"))), "RBox < u64 >");
        assert_eq!(compact(ffi_type(&ty("RString"))), "RString");
        assert_eq!(compact(ffi_type(&ty("u64"))), "u64");
    }

    #[test]
    fn plain_types_are_not_touched_and_owned_buffers_move() {
        assert_eq!(to_ffi(quote!(x), &ty("u64")).to_string(), "x");
        assert_eq!(
            compact(to_ffi(quote!(x), &ty("Vec<u8>"))),
            "RVec :: from (x)"
        );
        assert_eq!(
            compact(from_ffi(quote!(x), &ty("Vec<u8>"))),
            "RVec :: into_vec (x)"
        );
        assert_eq!(
            compact(from_ffi(quote!(x), &ty("String"))),
            "RString :: into_string (x)"
        );
    }

    #[test]
    fn maps_cross_as_lists_of_converted_pairs() {
        for map in [
            "HashMap<String, Vec<String>>",
            "std::collections::HashMap<String, Vec<String>, BuildHasherDefault<Fx>>",
            "BTreeMap<String, Vec<String>>",
        ] {
            assert_eq!(
                compact(ffi_type(&ty(map))),
                "RVec < Tuple2 < RString , RVec < RString > >>",
                "{map}"
            );
        }
        assert_eq!(
            compact(ffi_type(&ty("Option<BTreeMap<u8, HashMap<u16, u32>>>"))),
            "ROption < RVec < Tuple2 < u8 , RVec < Tuple2 < u16 , u32 >> >> >"
        );
        // Not a map as far as conversion goes: crosses as it is (and must be `StableAbi`).
        assert_eq!(compact(ffi_type(&ty("HashMap<u8>"))), "HashMap < u8 >");
        assert_eq!(
            compact(ffi_type(&ty("RHashMap<u8, u8>"))),
            "RHashMap < u8 , u8 >"
        );
    }

    #[test]
    fn maps_are_collected_back_into_the_type_as_written() {
        let map = ty("HashMap<String, u32, MyHasher>");
        let back = compact(from_ffi(quote!(x), &map));
        assert!(
            back.contains("collect :: < HashMap < String , u32 , MyHasher > >"),
            "{back}"
        );
        assert!(back.contains("RString :: into_string (__k)"), "{back}");
        let there = compact(to_ffi(quote!(x), &map));
        assert!(there.contains("collect :: < RVec < _ >>"), "{there}");
        assert!(
            there.contains("Tuple2 (RString :: from (__k) , __v)"),
            "{there}"
        );
        assert!(unsupported(&ty("HashMap<String, u8>")).is_none());
        assert!(unsupported(&ty("BTreeMap<u8, &[String]>")).is_some());
        assert!(unsupported(&ty("&[HashMap<u8, u8>]")).is_some());
    }

    #[test]
    fn a_boxed_value_is_taken_out_of_its_box_before_converting() {
        let boxed = compact(to_ffi(quote!(x), &ty("Box<Vec<String>>")));
        assert!(
            boxed.starts_with("RBox :: new ({ let __x = * x ;"),
            "{boxed}"
        );
        assert_eq!(
            compact(to_ffi(quote!(x), &ty("Box<u64>"))),
            "RBox :: new (* x)"
        );
    }

    #[test]
    fn slices_of_converted_types_are_refused() {
        assert!(
            unsupported(&ty("&[String]"))
                .unwrap()
                .contains("pass a `Vec<String>`")
        );
        assert!(unsupported(&ty("Vec<&[u8]>")).is_none());
        assert!(unsupported(&ty("Option<&[String]>")).is_some());
    }
}
