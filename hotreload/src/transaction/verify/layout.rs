//! Turns abi_stable's layout report (a tree dump many lines long) into one line that names
//! the first item that differs, in the user's terms: a method, a parameter, a field, and the
//! types on both sides as the sources spell them.

use abi_stable::abi_stability::abi_checking::{AbiInstability, AbiInstabilityErrors};
use abi_stable::type_layout::TLFieldOrFunction;

use hotreload_abi::MethodDescription;

use crate::__private::MethodSignature;

/// A module's exported methods as a source declares them: the module's own (copied out of its
/// image), or as the host or a calling module was compiled with them.
pub(crate) struct Declared(Vec<DeclaredMethod>);

struct DeclaredMethod {
    name: String,
    takes_state: bool,
    exclusive: bool,
    params: Vec<String>,
    types: Vec<String>,
    returns: String,
}

impl Declared {
    pub(crate) fn copy(methods: &[MethodDescription]) -> Self {
        Declared(
            methods
                .iter()
                .map(|m| DeclaredMethod {
                    name: m.name.as_str().to_owned(),
                    takes_state: m.takes_state,
                    exclusive: m.exclusive,
                    params: m.params.iter().map(|p| p.as_str().to_owned()).collect(),
                    types: m.types.iter().map(|t| t.as_str().to_owned()).collect(),
                    returns: m.returns.as_str().to_owned(),
                })
                .collect(),
        )
    }

    pub(crate) fn host(methods: &[MethodSignature]) -> Self {
        let owned = |items: &[&str]| items.iter().map(|&i| i.to_owned()).collect();
        Declared(
            methods
                .iter()
                .map(|m| DeclaredMethod {
                    name: m.name.to_owned(),
                    takes_state: m.takes_state,
                    exclusive: m.exclusive,
                    params: owned(m.params),
                    types: owned(m.types),
                    returns: m.returns.to_owned(),
                })
                .collect(),
        )
    }
}

impl Declared {
    /// How method `name` takes the state differently in `found` than here, if it does (a
    /// `&self` method become `&mut self`: same entry layout, another lock to call it under).
    pub(crate) fn receiver_difference(
        &self,
        found: &Declared,
        name: &str,
        expected_by: &str,
    ) -> Option<String> {
        let expected = self.0.iter().find(|m| m.name == name)?;
        let found = found.0.iter().find(|m| m.name == name)?;
        let spell = |m: &DeclaredMethod| match (m.takes_state, m.exclusive) {
            (false, _) => "no receiver",
            (true, false) => "`&self`",
            (true, true) => "`&mut self`",
        };
        (expected.takes_state != found.takes_state || expected.exclusive != found.exclusive).then(
            || {
                format!(
                    "method '{name}': takes {}, {expected_by} expects {}",
                    spell(found),
                    spell(expected)
                )
            },
        )
    }
}

/// abi_stable's name for a function's return value in a layout.
const RETURNS: &str = "__returns";

/// One line naming the first difference between the host's entry for a method and the
/// module's (each a struct whose one field is named after the method).
pub(crate) fn summarize(
    errors: &AbiInstabilityErrors,
    methods: &Declared,
    declared: &Declared,
    expected_by: &str,
) -> String {
    let Some(first) = errors.errors.iter().find(|e| !e.errs.is_empty()) else {
        return "the method's layout differs".into();
    };
    // The method the layout check stopped in, compared as both sources declare it.
    let method = first
        .stack_trace
        .first()
        .and_then(|step| match &step.expected {
            TLFieldOrFunction::Field(field) => Some(field.name()),
            TLFieldOrFunction::Function(_) => None,
        });
    if let Some(line) =
        method.and_then(|name| declared_difference(name, methods, declared, expected_by))
    {
        return line;
    }
    let location = location(first.stack_trace.iter().map(|ef| &ef.expected), methods);
    let what = describe(&first.errs);
    if location.is_empty() {
        format!("export table: {what}")
    } else {
        format!("{location}: {what}")
    }
}

/// How method `name` differs between the host's declaration and the module's: the number of
/// parameters, a parameter's type, or the return type, in the sources' spelling.
fn declared_difference(
    name: &str,
    host: &Declared,
    module: &Declared,
    expected_by: &str,
) -> Option<String> {
    let host = host.0.iter().find(|m| m.name == name)?;
    let module = module.0.iter().find(|m| m.name == name)?;
    if host.types.len() != module.types.len() {
        let count = |n: usize| format!("{n} parameter{}", if n == 1 { "" } else { "s" });
        return Some(format!(
            "method '{name}': takes {}, {expected_by} expects {}",
            count(module.types.len()),
            host.types.len()
        ));
    }
    let param = host
        .types
        .iter()
        .zip(&module.types)
        .position(|(h, m)| h != m);
    if let Some(i) = param {
        let label = host
            .params
            .get(i)
            .or(module.params.get(i))
            .map_or_else(String::new, |l| format!(" ('{l}')"));
        return Some(format!(
            "method '{name}', parameter {}{label}: expected {}, found {}",
            i + 1,
            host.types[i],
            module.types[i]
        ));
    }
    (host.returns != module.returns).then(|| {
        format!(
            "method '{name}', return type: expected {}, found {}",
            host.returns, module.returns
        )
    })
}

/// "method 'tick', parameter 1 ('dt')", from the path abi_stable took to the difference.
///
/// abi_stable names function-pointer parameters `param_<i>`, counting the state parameter;
/// the expected side's declarations give them back the user's numbering and names.
fn location<'a>(trace: impl Iterator<Item = &'a TLFieldOrFunction>, methods: &Declared) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut method: Option<&DeclaredMethod> = None;
    let mut in_function = false;
    let mut inside_return = false;
    for (depth, step) in trace.enumerate() {
        match step {
            TLFieldOrFunction::Field(field) if depth == 0 => {
                let name = field.name();
                method = methods.0.iter().find(|m| m.name == name);
                parts.push(format!("method '{name}'"));
            }
            TLFieldOrFunction::Function(_) => in_function = true,
            TLFieldOrFunction::Field(field) if in_function => {
                in_function = false;
                let name = field.name();
                if name == RETURNS {
                    inside_return = true;
                    parts.push("return type".into());
                } else {
                    parts.push(parameter(name, method));
                }
            }
            // Every method returns `EntryResult<R>`: the step into its `ROk` payload is the
            // framework's, not the user's.
            TLFieldOrFunction::Field(_) if inside_return => inside_return = false,
            TLFieldOrFunction::Field(field) => parts.push(format!("field '{}'", field.name())),
        }
    }
    parts.join(", ")
}

/// "parameter 1 ('dt')" for abi_stable's `param_1` of a method taking the state.
fn parameter(abi_name: &str, method: Option<&DeclaredMethod>) -> String {
    let index = abi_name
        .strip_prefix("param_")
        .and_then(|i| i.parse::<usize>().ok());
    match (index, method) {
        (Some(index), Some(method)) => {
            let user_index = if method.takes_state {
                index.checked_sub(1)
            } else {
                Some(index)
            };
            match user_index {
                None => "the state parameter".into(),
                Some(i) => match method.params.get(i) {
                    Some(name) => format!("parameter {} ('{name}')", i + 1),
                    None => format!("parameter {}", i + 1),
                },
            }
        }
        _ => format!("parameter '{abi_name}'"),
    }
}

/// The first shallow difference, as "expected X, found Y".
fn describe(errs: &[AbiInstability]) -> String {
    let preferred = errs
        .iter()
        .find(|e| matches!(e, AbiInstability::Name(_)))
        .or_else(|| errs.first());
    match preferred {
        Some(AbiInstability::Name(ef)) => format!("expected {}, found {}", ef.expected, ef.found),
        Some(AbiInstability::MismatchedPrimitive(ef)) => {
            format!("expected {:?}, found {:?}", ef.expected, ef.found)
        }
        Some(AbiInstability::Size(ef)) => {
            format!(
                "expected a size of {} bytes, found {}",
                ef.expected, ef.found
            )
        }
        Some(AbiInstability::Alignment(ef)) => {
            format!(
                "expected an alignment of {}, found {}",
                ef.expected, ef.found
            )
        }
        Some(AbiInstability::FieldCountMismatch(ef)) => {
            format!("expected {} fields, found {}", ef.expected, ef.found)
        }
        Some(AbiInstability::UnexpectedField(ef)) => format!(
            "expected field '{}', found '{}'",
            ef.expected.name(),
            ef.found.name()
        ),
        Some(AbiInstability::TooManyVariants(ef)) => {
            format!("expected {} variants, found {}", ef.expected, ef.found)
        }
        Some(AbiInstability::UnexpectedVariant(ef)) => {
            format!("expected variant '{}', found '{}'", ef.expected, ef.found)
        }
        Some(other) => {
            let debug = format!("{other:?}");
            let kind = debug.split(['(', '{', ' ']).next().unwrap_or("layout");
            format!("the layouts differ ({kind})")
        }
        None => "the layouts differ".into(),
    }
}
