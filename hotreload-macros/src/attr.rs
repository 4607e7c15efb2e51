//! Parses the arguments of `#[hot_module(...)]`.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitInt, LitStr, MetaNameValue, Token};

use crate::check::Errors;

/// The arguments given to `#[hot_module(...)]`.
pub(crate) struct Args {
    /// `version = N`: the API version.
    pub version: Option<LitInt>,
    /// `name = "..."`: overrides the module name derived from the state type.
    pub name: Option<LitStr>,
    /// `state_version = N`: the state schema version, 1 when absent.
    pub state_version: Option<LitInt>,
    /// `on_retire = method`: a method of the impl block run on the state of a version that
    /// stops serving.
    pub on_retire: Option<Ident>,
    /// `concurrent_save = true`: the `&self` methods never change the state, so a reload
    /// may save it while they run.
    pub concurrent_save: Option<bool>,
    /// `uses = [path::Callee, ...]`: the hot modules this module calls, by state type.
    pub uses: Option<Vec<syn::Path>>,
}

const KNOWN: &str =
    "expected `version`, `name`, `state_version`, `on_retire`, `concurrent_save` or `uses`";

impl Args {
    /// Parses the attribute's arguments, recording every problem in `errors`.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
        let mut args = Args {
            version: None,
            name: None,
            state_version: None,
            on_retire: None,
            concurrent_save: None,
            uses: None,
        };
        let parser = Punctuated::<MetaNameValue, Token![,]>::parse_terminated;
        let metas = match parser.parse2(tokens) {
            Ok(metas) => metas,
            Err(err) => {
                errors.push(syn::Error::new(
                    err.span(),
                    "expected arguments like `version = 1, name = \"game_logic\"`",
                ));
                return args;
            }
        };
        let mut version_given = false;
        for meta in metas {
            let Some(ident) = meta.path.get_ident() else {
                errors.spanned(&meta.path, format!("unknown argument; {KNOWN}"));
                continue;
            };
            match ident.to_string().as_str() {
                "version" => {
                    version_given = true;
                    set_once(&mut args.version, int_value(&meta, errors), &meta, errors)
                }
                "state_version" => set_once(
                    &mut args.state_version,
                    int_value(&meta, errors),
                    &meta,
                    errors,
                ),
                "name" => set_once(&mut args.name, name_value(&meta, errors), &meta, errors),
                "concurrent_save" => set_once(
                    &mut args.concurrent_save,
                    bool_value(&meta, errors),
                    &meta,
                    errors,
                ),
                "on_retire" => set_once(
                    &mut args.on_retire,
                    method_value(&meta, errors),
                    &meta,
                    errors,
                ),
                "uses" => set_once(&mut args.uses, paths_value(&meta, errors), &meta, errors),
                other => errors.spanned(ident, format!("unknown argument `{other}`; {KNOWN}")),
            }
        }
        if !version_given {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing `version`: write `#[hot_module(version = 1)]`",
            ));
        }
        args
    }
}

fn set_once<T>(slot: &mut Option<T>, value: Option<T>, meta: &MetaNameValue, errors: &mut Errors) {
    let Some(value) = value else { return };
    if slot.is_some() {
        let name = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        errors.spanned(&meta.path, format!("duplicate argument `{name}`"));
    } else {
        *slot = Some(value);
    }
}

fn int_value(meta: &MetaNameValue, errors: &mut Errors) -> Option<LitInt> {
    let name = meta
        .path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    match &meta.value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<u32>() {
            Ok(_) => Some(int.clone()),
            Err(_) => {
                errors.spanned(int, format!("`{name}` must fit in a u32"));
                None
            }
        },
        other => {
            errors.spanned(other, format!("expected an integer, like `{name} = 1`"));
            None
        }
    }
}

fn bool_value(meta: &MetaNameValue, errors: &mut Errors) -> Option<bool> {
    match &meta.value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Some(b.value),
        other => {
            errors.spanned(
                other,
                "expected `true` or `false`, like `concurrent_save = true`",
            );
            None
        }
    }
}

fn name_value(meta: &MetaNameValue, errors: &mut Errors) -> Option<LitStr> {
    match &meta.value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            let value = s.value();
            let valid = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if valid {
                Some(s.clone())
            } else {
                errors.spanned(s, "a module name uses only a-z, 0-9 and `_`");
                None
            }
        }
        other => {
            errors.spanned(other, "expected a string, like `name = \"game_logic\"`");
            None
        }
    }
}

fn method_value(meta: &MetaNameValue, errors: &mut Errors) -> Option<Ident> {
    let ident = match &meta.value {
        Expr::Path(path) if path.attrs.is_empty() && path.qself.is_none() => path.path.get_ident(),
        _ => None,
    };
    if ident.is_none() {
        errors.spanned(
            &meta.value,
            "expected the name of a method of this impl block, like `on_retire = stop`",
        );
    }
    ident.cloned()
}

/// `uses = [physics::Physics, ai::Ai]`: the state types of the modules called, each once.
fn paths_value(meta: &MetaNameValue, errors: &mut Errors) -> Option<Vec<syn::Path>> {
    const SHAPE: &str =
        "expected a list of hot module state types, like `uses = [physics::Physics]`";
    let Expr::Array(array) = &meta.value else {
        errors.spanned(&meta.value, SHAPE);
        return None;
    };
    let mut paths: Vec<syn::Path> = Vec::new();
    for elem in &array.elems {
        match elem {
            Expr::Path(path) if path.attrs.is_empty() && path.qself.is_none() => {
                if paths.iter().any(|seen| seen == &path.path) {
                    errors.spanned(&path.path, "this module is already in `uses`");
                } else {
                    paths.push(path.path.clone());
                }
            }
            other => errors.spanned(other, SHAPE),
        }
    }
    Some(paths)
}
