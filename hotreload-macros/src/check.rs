//! The rules a `#[hot_module]` impl block must follow, and the error collector they report to.
//!
//! Every rule reports into [`Errors`] instead of stopping, so a user sees all problems of one
//! expansion at once, each spanned on the offending tokens.

use std::fmt::Display;

use quote::ToTokens;
use syn::visit::{self, Visit};
use syn::{
    FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, Lifetime, PathArguments,
    ReturnType, Type, TypeReference,
};

/// All the errors of one expansion, reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn into_result(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Checks the impl block itself: inherent, not generic, on a plain named type.
pub(crate) fn impl_block(item: &ItemImpl, errors: &mut Errors) {
    if let Some((_, path, _)) = &item.trait_ {
        errors.spanned(
            path,
            "#[hot_module] goes on an inherent impl block (`impl State { ... }`), not a trait impl",
        );
    }
    if let Some(unsafety) = &item.unsafety {
        errors.spanned(unsafety, "a hot module impl block cannot be `unsafe`");
    }
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "a hot module cannot be generic: the loaded library must export one concrete type",
        );
    }
    if let Some(where_clause) = &item.generics.where_clause {
        errors.spanned(
            where_clause,
            "a hot module impl block cannot have a `where` clause",
        );
    }
    match &*item.self_ty {
        Type::Path(path) if path.qself.is_none() && path.path.segments.len() == 1 => {
            let segment = &path.path.segments[0];
            if !segment.arguments.is_none() {
                errors.spanned(
                    &segment.arguments,
                    "a hot module's state type cannot have generic or lifetime arguments",
                );
            }
        }
        other => errors.spanned(
            other,
            "#[hot_module] needs the state type by its plain name, like `impl GameLogic { ... }`",
        ),
    }
}

/// Checks that `on_retire = hook` names a method of the block shaped `fn hook(&mut self)`.
pub(crate) fn retire_hook(item: &ItemImpl, hook: &Ident, errors: &mut Errors) {
    let found = item.items.iter().find_map(|impl_item| match impl_item {
        ImplItem::Fn(func) if func.sig.ident == *hook => Some(func),
        _ => None,
    });
    let Some(func) = found else {
        errors.spanned(
            hook,
            format!("`on_retire` names `{hook}`, but this impl block has no method `{hook}`"),
        );
        return;
    };
    let sig = &func.sig;
    let only_mut_self = sig.inputs.len() == 1
        && matches!(sig.inputs.first(), Some(FnArg::Receiver(r)) if is_mut_self(&r.ty));
    let returns_unit = match &sig.output {
        ReturnType::Default => true,
        ReturnType::Type(_, ty) => matches!(peel(ty), Type::Tuple(t) if t.elems.is_empty()),
    };
    let plain = sig.asyncness.is_none()
        && sig.unsafety.is_none()
        && sig.variadic.is_none()
        && sig.generics.params.is_empty();
    if !(only_mut_self && returns_unit && plain) {
        errors.spanned(
            sig,
            format!(
                "the `on_retire` hook must be `fn {hook}(&mut self)`: no other argument, no \
                 return value, not `async`, `unsafe` or generic"
            ),
        );
    }
}

/// Whether `ty` is `&mut Self`: the type syn gives both `&mut self` and `self: &mut Self`.
fn is_mut_self(ty: &Type) -> bool {
    let Type::Reference(reference) = peel(ty) else {
        return false;
    };
    reference.mutability.is_some()
        && matches!(peel(&reference.elem), Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

/// Checks one exported method's signature. Returns false when it cannot be exported.
pub(crate) fn method(func: &ImplItemFn, errors: &mut Errors) -> bool {
    let sig = &func.sig;
    let mut ok = true;
    let mut fail = |tokens: &dyn ToTokens, message: &str| {
        errors.spanned(tokens, message);
        ok = false;
    };
    if let Some(t) = &sig.asyncness {
        fail(
            t,
            "a hot method cannot be `async`: futures cannot cross a reload",
        );
    }
    if let Some(t) = &sig.unsafety {
        fail(
            t,
            "a hot method cannot be `unsafe fn`: the host calls it through a safe wrapper",
        );
    }
    if let Some(t) = &sig.abi {
        fail(
            t,
            "a hot method cannot declare an ABI: #[hot_module] generates the `extern \"C\"` entry",
        );
    }
    if let Some(t) = &sig.variadic {
        fail(t, "a hot method cannot be variadic");
    }
    if !sig.generics.params.is_empty() {
        fail(
            &sig.generics.params,
            "a hot method cannot be generic: each exported entry needs one concrete signature",
        );
    }
    if let Some(t) = &sig.generics.where_clause {
        fail(t, "a hot method cannot have a `where` clause");
    }
    if sig.ident.to_string().starts_with("__") {
        fail(
            &sig.ident,
            "hot method names starting with `__` are reserved for hotreload",
        );
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                let by_ref = receiver.reference.is_some() && receiver.colon_token.is_none();
                if !by_ref {
                    fail(
                        receiver,
                        "a hot method takes `&self`, `&mut self` or no receiver; the module \
                         keeps its state, so it cannot be taken by value",
                    );
                }
            }
            FnArg::Typed(typed) => {
                if let Some(problem) = argument_type(&typed.ty) {
                    fail(&typed.ty, &problem);
                }
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Some(problem) = return_type(ty) {
            fail(ty, &problem);
        }
    }
    ok
}

/// Why an argument type cannot cross the boundary, if it certainly cannot.
///
/// Ordinary types with an FFI-safe form (`String`, `&str`, `Vec<T>`, `&[T]`, `Option<T>`,
/// `Result<T, E>`, `Box<T>`, `HashMap<K, V>`, `BTreeMap<K, V>`, tuples of 2 to 4) are
/// converted (see `convert`); types not named here are checked by the compiler against
/// `StableAbi` in the generated code. This list catches the common standard types that have
/// no conversion, with a suggestion.
fn argument_type(ty: &Type) -> Option<String> {
    if let Some(problem) = crate::convert::unsupported(ty) {
        return Some(problem);
    }
    match ty {
        Type::ImplTrait(_) => Some(
            "`impl Trait` cannot cross the hot-reload boundary; use a concrete FFI-safe type"
                .into(),
        ),
        Type::TraitObject(_) => Some(
            "trait objects cannot cross the hot-reload boundary; use a concrete FFI-safe type"
                .into(),
        ),
        Type::Reference(reference) => match &*reference.elem {
            Type::Path(p) if p.path.is_ident("str") && reference.mutability.is_none() => None,
            Type::Slice(_) if reference.mutability.is_none() => None,
            _ => Some(
                "a hot method cannot take a reference other than `&str` or `&[T]`; pass an \
                 owned value"
                    .into(),
            ),
        },
        Type::Tuple(tuple) if tuple.elems.len() == 1 || tuple.elems.len() > 4 => Some(
            "only tuples of 2 to 4 elements cross the hot-reload boundary; use a \
             `#[derive(StableAbi)]` struct"
                .into(),
        ),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(argument_type),
        Type::Paren(inner) => argument_type(&inner.elem),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            let suggestion = match last.ident.to_string().as_str() {
                "Arc" => "RArc<T>",
                "Cow" => "RCow<'_, T>",
                "Rc" => "RArc<T> or an owned value",
                _ => return nested_arguments(&last.arguments),
            };
            let name = &last.ident;
            Some(format!(
                "`{name}` is not FFI-safe; use `abi_stable::std_types::{suggestion}`"
            ))
        }
        _ => None,
    }
}

/// Checks the generic arguments of an FFI-safe container (`RVec<String>` is still wrong).
fn nested_arguments(arguments: &PathArguments) -> Option<String> {
    let PathArguments::AngleBracketed(angle) = arguments else {
        return None;
    };
    angle.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => argument_type(ty),
        _ => None,
    })
}

/// Why a return type cannot cross the boundary, if it certainly cannot.
///
/// A returned value outlives the call, and may outlive the version that made it, so it must
/// not borrow anything: not at the top (`&str`), not nested (`Option<&str>`, `(u8, &[u8])`),
/// and not through a lifetime argument (`RStr<'static>`, `Cow<'a, str>`).
fn return_type(ty: &Type) -> Option<String> {
    if let Type::Reference(_) = peel(ty) {
        return Some(
            "a hot method cannot return a reference: it would point into state or code that a \
             reload replaces; return an owned value"
                .into(),
        );
    }
    let mut borrows = Borrows::default();
    borrows.visit_type(ty);
    if borrows.reference {
        return Some(
            "a hot method cannot return a type holding a reference: it would point into state or \
             code that a reload replaces; return owned values (`String` for `&str`, `Vec<T>` for \
             `&[T]`)"
                .into(),
        );
    }
    if borrows.lifetime {
        return Some(
            "a hot method cannot return a borrowed type: it would outlive the version that \
             lent it; return an owned value"
                .into(),
        );
    }
    argument_type(ty)
}

/// `ty` without the parentheses or invisible groups around it.
fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Paren(inner) => peel(&inner.elem),
        Type::Group(inner) => peel(&inner.elem),
        other => other,
    }
}

/// What a type borrows, found at any depth.
#[derive(Default)]
struct Borrows {
    /// A `&T` or `&mut T` somewhere in it.
    reference: bool,
    /// A lifetime somewhere in it (`'static`, `'_`, `'a`), references included.
    lifetime: bool,
}

impl<'ast> Visit<'ast> for Borrows {
    fn visit_type_reference(&mut self, reference: &'ast TypeReference) {
        self.reference = true;
        visit::visit_type_reference(self, reference);
    }

    fn visit_lifetime(&mut self, _: &'ast Lifetime) {
        self.lifetime = true;
    }
}
