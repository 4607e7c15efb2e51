//! `#[migrate(from = k)]` and `#[migrate(to = k)]` functions of a `#[hot_module]` block: the
//! steps between state schemas, checked here and chained into the module's `upgrade` and
//! `downgrade`.
//!
//! An up step `#[migrate(from = k)] fn f(old: A) -> B` turns schema `k` into `k + 1`; the
//! steps from the oldest schema the build reads up to its own form one unbroken chain, and
//! the last returns the state type. A down step `#[migrate(to = k)]` turns `k + 1` into `k`:
//! the first (`to = n - 1`) takes `&self`, the others the previous step's value. Each may
//! return `Result<T, E>` with `E: Display`. The compiler checks that each step's output is
//! the next one's input; this module checks that the chains have no gap.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, FnArg, Ident, ImplItemFn, LitInt, ReturnType, Type};

use crate::check::Errors;

/// Which way a step goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Up,
    Down,
}

/// One declared step.
pub(crate) struct Step<'a> {
    pub direction: Direction,
    /// `from = k` for an up step, `to = k` for a down step.
    pub schema: u32,
    pub ident: &'a Ident,
    /// Whether it returns a `Result`.
    pub fallible: bool,
    /// The value it takes (`None`: `&self`).
    pub input: Option<&'a Type>,
}

/// The `#[migrate]` attribute of `func`, if it has one.
pub(crate) fn attribute(func: &ImplItemFn) -> Option<&Attribute> {
    func.attrs
        .iter()
        .find(|attr| attr.path().is_ident("migrate"))
}

/// Reads a step from its function, reporting what is wrong with it.
pub(crate) fn step<'a>(
    func: &'a ImplItemFn,
    attr: &Attribute,
    errors: &mut Errors,
) -> Option<Step<'a>> {
    let mut found: Option<(Direction, u32)> = None;
    let parsed = attr.parse_nested_meta(|meta| {
        let direction = if meta.path.is_ident("from") {
            Direction::Up
        } else if meta.path.is_ident("to") {
            Direction::Down
        } else {
            return Err(meta.error("expected `from = N` (an upgrade) or `to = N` (a downgrade)"));
        };
        let schema: LitInt = meta.value()?.parse()?;
        if found.is_some() {
            return Err(meta.error("one `from` or one `to` per migration"));
        }
        found = Some((direction, schema.base10_parse()?));
        Ok(())
    });
    if let Err(err) = parsed {
        errors.push(err);
        return None;
    }
    let Some((direction, schema)) = found else {
        errors.spanned(
            attr,
            "expected `#[migrate(from = N)]` or `#[migrate(to = N)]`",
        );
        return None;
    };
    let sig = &func.sig;
    let shape = match direction {
        Direction::Up => format!(
            "a migration from schema v{schema} takes the old state by value and returns the \
             next one: `fn {}(old: StateV{schema}) -> StateV{}`",
            sig.ident,
            schema + 1
        ),
        Direction::Down => format!(
            "a migration to schema v{schema} returns that schema's state: \
             `fn {}(&self) -> StateV{schema}` for the first step down, \
             `fn {}(newer: StateV{}) -> StateV{schema}` for the next ones",
            sig.ident,
            sig.ident,
            schema + 1
        ),
    };
    let plain = sig.asyncness.is_none()
        && sig.unsafety.is_none()
        && sig.generics.params.is_empty()
        && sig.variadic.is_none();
    let ReturnType::Type(_, output) = &sig.output else {
        errors.spanned(sig, shape);
        return None;
    };
    let mut receiver = None;
    let mut inputs = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => receiver = Some(r),
            FnArg::Typed(typed) => inputs.push(&*typed.ty),
        }
    }
    let input = match (receiver, inputs.as_slice()) {
        (None, [input]) => Some(*input),
        (Some(r), [])
            if direction == Direction::Down && r.reference.is_some() && r.mutability.is_none() =>
        {
            None
        }
        _ => {
            errors.spanned(sig, shape);
            return None;
        }
    };
    if !plain {
        errors.spanned(sig, shape);
        return None;
    }
    Some(Step {
        direction,
        schema,
        ident: &sig.ident,
        fallible: returns_result(output),
        input,
    })
}

fn returns_result(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == "Result"))
}

/// The steps of one module, checked as chains ending (up) or starting (down) at its schema.
pub(crate) struct Chains<'a> {
    /// Up steps by `from`, oldest first.
    pub up: Vec<Step<'a>>,
    /// Down steps by `to`, newest first.
    pub down: Vec<Step<'a>>,
}

impl<'a> Chains<'a> {
    pub(crate) fn new(steps: Vec<Step<'a>>, schema: u32, errors: &mut Errors) -> Self {
        let (mut up, mut down): (Vec<_>, Vec<_>) = steps
            .into_iter()
            .partition(|s| s.direction == Direction::Up);
        up.sort_by_key(|s| s.schema);
        down.sort_by_key(|s| std::cmp::Reverse(s.schema));
        for step in up.iter().chain(&down) {
            if step.schema >= schema {
                errors.spanned(
                    step.ident,
                    format!(
                        "this build's state schema is v{schema} (`state_version`): a migration \
                         {} v{} is not below it",
                        if step.direction == Direction::Up {
                            "from"
                        } else {
                            "to"
                        },
                        step.schema
                    ),
                );
            }
        }
        up.retain(|step| step.schema < schema);
        down.retain(|step| step.schema < schema);
        // Each chain is unbroken and ends (up) or starts (down) at the build's own schema.
        let mut expected = schema;
        for step in up.iter().rev() {
            if step.schema + 1 != expected {
                report_gap(step, expected, Direction::Up, errors);
            }
            expected = step.schema;
        }
        let mut expected = schema;
        for (i, step) in down.iter().enumerate() {
            if step.schema + 1 != expected {
                report_gap(step, expected, Direction::Down, errors);
            }
            if (i == 0) != step.input.is_none() {
                errors.spanned(
                    step.ident,
                    if i == 0 {
                        format!(
                            "the first step down (`to = {}`) takes the running state: \
                             `fn {}(&self) -> StateV{}`",
                            step.schema, step.ident, step.schema
                        )
                    } else {
                        format!(
                            "a step down after the first takes the previous step's value: \
                             `fn {}(newer: StateV{}) -> StateV{}`",
                            step.ident,
                            step.schema + 1,
                            step.schema
                        )
                    },
                );
            }
            expected = step.schema;
        }
        Chains { up, down }
    }

    /// The descriptor's list of steps.
    pub(crate) fn descriptions(&self) -> Vec<TokenStream> {
        self.up
            .iter()
            .chain(&self.down)
            .map(|step| {
                let (from, to) = match step.direction {
                    Direction::Up => (step.schema, step.schema + 1),
                    Direction::Down => (step.schema + 1, step.schema),
                };
                let name = step.ident.to_string();
                quote!(__hr::MigrationStep { from: #from, to: #to, name: __hr::RStr::from_str(#name) })
            })
            .collect()
    }

    /// `upgrade` and `downgrade` of the module's `HotModule` impl.
    pub(crate) fn functions(&self, self_ty: &Type) -> TokenStream {
        let upgrade = (!self.up.is_empty()).then(|| {
            let arms = (0..self.up.len()).map(|first| {
                let start = &self.up[first];
                let from = start.schema;
                let input = start.input;
                let steps = self.up[first..].iter().map(|step| apply(self_ty, step));
                quote! {
                    #from => {
                        let value: #input = __hr::decode_schema(payload, #from)?;
                        #(let value = #steps;)*
                        ::core::result::Result::Ok(value)
                    }
                }
            });
            quote! {
                fn upgrade(schema: u32, payload: &[u8]) -> ::core::result::Result<Self, ::std::string::String> {
                    match schema {
                        #(#arms)*
                        _ => ::core::result::Result::Err(__hr::no_way_up::<Self>(schema)),
                    }
                }
            }
        });
        let downgrade = (!self.down.is_empty()).then(|| {
            let arms = (0..self.down.len()).map(|last| {
                let to = self.down[last].schema;
                let steps = self.down[..=last].iter().map(|step| apply(self_ty, step));
                quote! {
                    #to => {
                        #(let value = #steps;)*
                        __hr::encode_schema(&value)
                    }
                }
            });
            quote! {
                fn downgrade(&self, schema: u32) -> ::core::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                    match schema {
                        #(#arms)*
                        _ => ::core::result::Result::Err(__hr::no_way_down::<Self>(schema)),
                    }
                }
            }
        });
        quote!(#upgrade #downgrade)
    }
}

/// One step applied to `value` (or to `self`, the first step down), named in its errors.
fn apply(self_ty: &Type, step: &Step<'_>) -> TokenStream {
    let ident = step.ident;
    let name = ident.to_string();
    let (from, to) = match step.direction {
        Direction::Up => (step.schema, step.schema + 1),
        Direction::Down => (step.schema + 1, step.schema),
    };
    let call = match step.input {
        Some(_) => quote!(<#self_ty>::#ident(value)),
        None => quote!(<#self_ty>::#ident(self)),
    };
    let result = if step.fallible {
        quote!(#call.map_err(|err| ::std::string::ToString::to_string(&err)))
    } else {
        quote!(::core::result::Result::Ok(#call))
    };
    quote!(__hr::migration_step(#from, #to, #name, move || #result)?)
}

fn report_gap(step: &Step<'_>, expected: u32, direction: Direction, errors: &mut Errors) {
    let message = match direction {
        Direction::Up => format!(
            "the migrations up must go one schema at a time to this build's: after `from = {}` \
             comes `from = {}`, which is missing",
            step.schema,
            step.schema + 1
        ),
        Direction::Down => format!(
            "the migrations down must go one schema at a time from this build's: before `to = \
             {}` comes `to = {}`, which is missing",
            step.schema,
            expected - 1
        ),
    };
    if step.schema + 1 < expected {
        errors.spanned(step.ident, message);
    } else {
        errors.spanned(
            step.ident,
            format!(
                "a second migration {} v{}",
                if direction == Direction::Up {
                    "from"
                } else {
                    "to"
                },
                step.schema
            ),
        );
    }
}
