//! Turns abi_stable's layout report (a tree dump many lines long) into one line that names
//! the first item that differs, in the user's terms: a method, a parameter, a field.

use abi_stable::abi_stability::abi_checking::{AbiInstability, AbiInstabilityErrors};
use abi_stable::type_layout::{TLFieldOrFunction, TypeLayout};

/// The table field that holds the lifecycle entries, named by `#[hot_module]`.
const LIFECYCLE_FIELD: &str = "__lifecycle";
/// The state parameter every method entry with a receiver starts with.
const STATE_PARAM: &str = "__state";
/// abi_stable's name for a function's return value in a layout.
const RETURNS: &str = "__returns";

/// One line naming the first difference between the host's table and the module's.
pub(crate) fn summarize(
    errors: &AbiInstabilityErrors,
    expected: &'static TypeLayout,
    found: &'static TypeLayout,
) -> String {
    if let Some(line) = method_set_difference(expected, found) {
        return line;
    }
    let Some(first) = errors.errors.iter().find(|e| !e.errs.is_empty()) else {
        return "the export table's layout differs".into();
    };
    let location = location(first.stack_trace.iter().map(|ef| &ef.expected));
    let what = describe(&first.errs);
    if location.is_empty() {
        format!("export table: {what}")
    } else {
        format!("{location}: {what}")
    }
}

fn field_names(layout: &'static TypeLayout) -> Vec<&'static str> {
    layout
        .get_fields()
        .map(|fields| fields.iter().map(|f| f.name()).collect())
        .unwrap_or_default()
}

/// Methods added, removed or moved: the most common change, said directly.
fn method_set_difference(expected: &'static TypeLayout, found: &'static TypeLayout) -> Option<String> {
    let host = field_names(expected);
    let module = field_names(found);
    if host == module {
        return None;
    }
    if let Some(missing) = host.iter().find(|name| !module.contains(name)) {
        return Some(format!("method '{missing}' is missing"));
    }
    if let Some(extra) = module.iter().find(|name| !host.contains(name)) {
        return Some(format!("method '{extra}' is not known to the host"));
    }
    Some(format!(
        "methods are declared in another order: host has {}, module has {}",
        host.join(", "),
        module.join(", ")
    ))
}

/// "method 'tick', parameter 1 ('dt')", from the path abi_stable took to the difference.
fn location<'a>(trace: impl Iterator<Item = &'a TLFieldOrFunction>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut function_params: Option<Vec<&'static str>> = None;
    let mut inside_return = false;
    for (depth, step) in trace.enumerate() {
        match step {
            TLFieldOrFunction::Field(field) if depth == 0 => parts.push(if field.name() == LIFECYCLE_FIELD {
                "lifecycle entries".into()
            } else {
                format!("method '{}'", field.name())
            }),
            TLFieldOrFunction::Function(function) => {
                let params: Vec<&'static str> = function.param_names.as_str().split(';').collect();
                function_params = Some(params);
            }
            TLFieldOrFunction::Field(field) => match function_params.take() {
                Some(params) => {
                    let name = field.name();
                    if name == RETURNS {
                        inside_return = true;
                        parts.push("return type".into());
                    } else {
                        let user_params: Vec<_> =
                            params.into_iter().filter(|p| *p != STATE_PARAM).collect();
                        let position = user_params.iter().position(|p| *p == name);
                        parts.push(match position {
                            Some(i) => format!("parameter {} ('{name}')", i + 1),
                            None => format!("parameter '{name}'"),
                        });
                    }
                }
                // Every method returns `EntryResult<R>`: the step into its `ROk` payload is
                // the framework's, not the user's.
                None if inside_return => inside_return = false,
                None => parts.push(format!("field '{}'", field.name())),
            },
        }
    }
    parts.join(", ")
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
            format!("expected a size of {} bytes, found {}", ef.expected, ef.found)
        }
        Some(AbiInstability::Alignment(ef)) => {
            format!("expected an alignment of {}, found {}", ef.expected, ef.found)
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
