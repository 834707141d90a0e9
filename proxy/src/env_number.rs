//! A number a process reads from an environment variable: bounded, with a default, and an
//! error that names the variable and the range.

/// `name`'s value (read through `get`) as a number from 0 to `max`, or `default` when it is
/// unset. `unit` names what is counted, for the error.
pub fn bounded(
    name: &str,
    default: usize,
    max: usize,
    unit: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<usize, String> {
    match get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{name} must be a number of {unit} from 0 to {max}, not {v:?}")),
    }
}
