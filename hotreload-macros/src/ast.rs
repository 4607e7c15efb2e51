//! A typed model of a `#[hot_module]` impl block that keeps the user's original tokens.

use proc_macro2::Span;
use syn::{FnArg, Ident, ImplItem, ItemImpl, LitInt, LitStr, Pat, ReturnType, Type, Visibility};

use crate::attr::Args;
use crate::check::{self, Errors};
use crate::migrate::{self, Chains};

/// One `#[hot_module]` impl block, ready to expand.
pub(crate) struct Module<'a> {
    /// The state type, as the user wrote it.
    pub self_ty: &'a Type,
    /// The module name exported in the descriptor.
    pub name: LitStr,
    /// `version = N`.
    pub api_version: LitInt,
    /// `state_version = N`, or 1.
    pub state_version: LitInt,
    /// The exported (`pub`) methods, in declaration order.
    pub methods: Vec<Method<'a>>,
    /// The methods without `pub`: helpers, not exported, which `hot_fn!` refuses by name.
    pub helpers: Vec<Helper<'a>>,
    /// `on_retire = method`: the method the retire hook calls.
    pub on_retire: Option<Ident>,
    /// The `#[migrate]` steps between state schemas.
    pub migrations: Chains<'a>,
    /// `concurrent_save = true`.
    pub concurrent_save: bool,
    /// `uses = [...]`: the state types of the hot modules it calls.
    pub uses: Vec<syn::Path>,
}

/// How an exported method receives the state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Receiver {
    /// No receiver: an associated function.
    None,
    /// `&self`: may run concurrently with other shared calls.
    Shared,
    /// `&mut self`: runs alone.
    Exclusive,
}

/// One exported method.
pub(crate) struct Method<'a> {
    pub ident: &'a Ident,
    pub receiver: Receiver,
    pub args: Vec<Arg<'a>>,
    /// The return type; `None` for `()`.
    pub output: Option<&'a Type>,
    /// The method as written (signature and body), for its digest.
    pub source: &'a syn::ImplItemFn,
}

/// A method of the block that is not exported (not `pub`).
pub(crate) struct Helper<'a> {
    pub ident: &'a Ident,
    /// How many arguments it takes besides the receiver.
    pub arg_count: usize,
}

/// One argument of an exported method.
pub(crate) struct Arg<'a> {
    /// The name used in the export table's signature (the user's, when it is a plain binding).
    pub label: Ident,
    pub ty: &'a Type,
}

impl<'a> Module<'a> {
    /// Builds the model, reporting every rule broken into `errors`.
    pub(crate) fn from_syn(item: &'a ItemImpl, args: Args, errors: &mut Errors) -> Option<Self> {
        check::impl_block(item, errors);
        let mut methods = Vec::new();
        let mut helpers = Vec::new();
        let mut steps = Vec::new();
        for impl_item in &item.items {
            let ImplItem::Fn(func) = impl_item else {
                continue;
            };
            if let Some(attr) = migrate::attribute(func) {
                steps.extend(migrate::step(func, attr, errors));
                continue;
            }
            if !matches!(func.vis, Visibility::Public(_)) {
                helpers.push(Helper {
                    ident: &func.sig.ident,
                    arg_count: func
                        .sig
                        .inputs
                        .iter()
                        .filter(|input| matches!(input, FnArg::Typed(_)))
                        .count(),
                });
                continue;
            }
            if check::method(func, errors) {
                methods.push(Method::from_syn(func));
            }
        }
        if let Some(hook) = &args.on_retire {
            check::retire_hook(item, hook, errors);
        }
        let name = match args.name {
            Some(name) => name,
            None => LitStr::new(&snake_case(&type_name(&item.self_ty)?), Span::call_site()),
        };
        let state_version = args
            .state_version
            .unwrap_or_else(|| LitInt::new("1", Span::call_site()));
        let schema = state_version.base10_parse::<u32>().unwrap_or(1);
        let migrations = Chains::new(steps, schema, errors);
        Some(Module {
            self_ty: &item.self_ty,
            name,
            api_version: args.version?,
            state_version,
            migrations,
            concurrent_save: args.concurrent_save.unwrap_or(false),
            uses: args.uses.unwrap_or_default(),
            methods,
            helpers,
            on_retire: args.on_retire,
        })
    }
}

impl<'a> Method<'a> {
    fn from_syn(func: &'a syn::ImplItemFn) -> Self {
        let mut receiver = Receiver::None;
        let mut args = Vec::new();
        for (index, input) in func.sig.inputs.iter().enumerate() {
            match input {
                FnArg::Receiver(r) if r.mutability.is_some() => receiver = Receiver::Exclusive,
                FnArg::Receiver(_) => receiver = Receiver::Shared,
                FnArg::Typed(typed) => {
                    let label = match &*typed.pat {
                        Pat::Ident(binding) if !binding.ident.to_string().starts_with('_') => {
                            Ident::new(&binding.ident.to_string(), binding.ident.span())
                        }
                        _ => Ident::new(&format!("arg{index}"), Span::call_site()),
                    };
                    args.push(Arg {
                        label,
                        ty: &typed.ty,
                    });
                }
            }
        }
        let output = match &func.sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, ty) => Some(&**ty),
        };
        Method {
            ident: &func.sig.ident,
            receiver,
            args,
            output,
            source: func,
        }
    }
}

fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// `GameLogic` -> `game_logic`, `HTTPServer` -> `http_server`.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_case_splits_words_and_acronyms() {
        assert_eq!(snake_case("GameLogic"), "game_logic");
        assert_eq!(snake_case("HTTPServer"), "http_server");
        assert_eq!(snake_case("Counter"), "counter");
        assert_eq!(snake_case("Vec3Math"), "vec3_math");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }
}
