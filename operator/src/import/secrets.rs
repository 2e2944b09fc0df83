//! Which values are secrets. An environment variable whose name says so (PASSWORD, TOKEN,
//! KEY, SECRET, …), a URL with a password in it, or a long value that looks random becomes a
//! `secretKeyRef`; its value is never written. Command-line flags such as `--password=…` are
//! moved to the environment the same way and referenced as `$(VAR)`.

/// Name fragments that make a variable a secret (compared in upper case).
const SECRET_NAME_PARTS: [&str; 9] = [
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "TOKEN",
    "SECRET",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
    "SALT",
];

/// Names that contain a fragment above but are not secrets.
const NOT_SECRET_NAMES: [&str; 6] = [
    "KEYBOARD",
    "KEY_FILE",
    "KEYFILE",
    "PUBLIC_KEY",
    "AUTH_METHOD",
    "AUTHOR",
];

/// Whether a variable or flag name says its value is a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase().replace('-', "_");
    if upper.ends_with("PASS") || upper.starts_with("PASS_") || upper.contains("_PASS_") {
        return true;
    }
    if NOT_SECRET_NAMES.iter().any(|n| upper.contains(n)) && !upper.contains("PASSWORD") {
        return false;
    }
    SECRET_NAME_PARTS.iter().any(|part| upper.contains(part))
}

/// Whether `value` carries a password in a URL (`scheme://user:password@host`).
pub fn has_url_password(value: &str) -> bool {
    let Some((_, rest)) = value.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return false;
    };
    userinfo
        .split_once(':')
        .is_some_and(|(_, password)| !password.is_empty())
}

/// Shannon entropy of `value` in bits per character.
fn entropy(value: &str) -> f64 {
    let mut counts = [0usize; 256];
    let bytes = value.as_bytes();
    for b in bytes {
        counts[usize::from(*b)] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether `value` looks like a generated credential: at least 20 characters without spaces,
/// not a path or a plain URL, of several character classes (or long hex/base64) and high
/// entropy.
pub fn looks_random(value: &str) -> bool {
    let v = value.trim();
    if v.len() < 20 || v.contains(char::is_whitespace) || v.starts_with('/') || v.contains("://") {
        return false;
    }
    let classes = [
        v.chars().any(|c| c.is_ascii_lowercase()),
        v.chars().any(|c| c.is_ascii_uppercase()),
        v.chars().any(|c| c.is_ascii_digit()),
        v.chars().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let hex = v.len() >= 32 && v.chars().all(|c| c.is_ascii_hexdigit());
    (classes >= 3 && entropy(v) >= 3.5) || (hex && entropy(v) >= 3.0)
}

/// Whether an environment entry must go to a Secret, and why (for the README).
pub fn secret_reason(name: &str, value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return None;
    }
    if is_secret_name(name) {
        Some("its name says it is a secret")
    } else if has_url_password(value) {
        Some("it is a URL with a password")
    } else if looks_random(value) {
        Some("it looks like a generated credential")
    } else {
        None
    }
}

/// An argument moved out of a command line: `--password=x` becomes `--password=$(ARG_PASSWORD)`
/// and `ARG_PASSWORD` comes from the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedArgument {
    /// The environment variable that now holds it.
    pub variable: String,
    /// The value (kept in memory only, to check that it is written nowhere).
    pub value: String,
}

fn flag_variable(flag: &str) -> String {
    let name: String = flag
        .trim_start_matches('-')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ARG_{name}")
}

/// Rewrites a command line so that no secret is in it: `--flag=value` and `--flag value` with
/// a secret flag name, and values that look random, become `$(VAR)` references (which the
/// kubelet expands from the container's environment). Returns the new arguments and what was
/// moved.
pub fn scrub_arguments(args: &[String]) -> (Vec<String>, Vec<MovedArgument>) {
    let mut out = Vec::with_capacity(args.len());
    let mut moved: Vec<MovedArgument> = Vec::new();
    let take = |flag: &str, value: &str, moved: &mut Vec<MovedArgument>| -> String {
        let base = flag_variable(flag);
        let mut variable = base.clone();
        let mut n = 2;
        while moved
            .iter()
            .any(|m| m.variable == variable && m.value != value)
        {
            variable = format!("{base}_{n}");
            n += 1;
        }
        if !moved.iter().any(|m| m.variable == variable) {
            moved.push(MovedArgument {
                variable: variable.clone(),
                value: value.to_string(),
            });
        }
        format!("$({variable})")
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if let Some((flag, value)) = arg.split_once('=').filter(|(f, _)| f.starts_with('-')) {
            if !value.is_empty() && (is_secret_name(flag) || looks_random(value)) {
                let reference = take(flag, value, &mut moved);
                out.push(format!("{flag}={reference}"));
                i += 1;
                continue;
            }
        } else if arg.starts_with('-')
            && is_secret_name(arg)
            && let Some(value) = args.get(i + 1)
            && !value.starts_with('-')
        {
            out.push(arg.clone());
            out.push(take(arg, value, &mut moved));
            i += 2;
            continue;
        } else if looks_random(arg) {
            out.push(take("--value", arg, &mut moved));
            i += 1;
            continue;
        }
        out.push(arg.clone());
        i += 1;
    }
    (out, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for name in [
            "DB_PASSWORD",
            "POSTGRES_PASSWORD",
            "API_TOKEN",
            "SECRET_KEY_BASE",
            "AWS_SECRET_ACCESS_KEY",
            "N8N_ENCRYPTION_KEY",
            "REDIS_PASS",
            "--requirepass",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "TZ",
            "MODE",
            "PUID",
            "KEYBOARD_LAYOUT",
            "LOG_LEVEL",
            "DB_HOST",
            "SESSION_SEED",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn urls_with_passwords_and_random_values() {
        assert!(has_url_password("postgres://app:s3cret@db:5432/homelab"));
        assert!(!has_url_password("postgres://app@db:5432/homelab"));
        assert!(!has_url_password("http://example.org/a:b@c"));
        assert!(looks_random("q8Jf2LkPz0XwV7bNc4RtYs9"));
        assert!(looks_random("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"));
        assert!(!looks_random("Europe/Berlin"));
        assert!(!looks_random("/var/lib/postgresql/data"));
        assert!(!looks_random("http://n8n.automation:5678/webhook"));
        assert!(!looks_random("production"));
        assert_eq!(
            secret_reason("DATABASE_URL", "postgres://a:b@h/d"),
            Some("it is a URL with a password")
        );
        assert_eq!(secret_reason("MODE", "prod"), None);
        assert_eq!(
            secret_reason("DB_PASSWORD", ""),
            None,
            "an empty value hides nothing"
        );
    }

    #[test]
    fn secret_flags_leave_the_command_line() {
        let args: Vec<String> = [
            "redis-server",
            "--requirepass",
            "hunter2hunter2",
            "--port=6379",
        ]
        .map(String::from)
        .to_vec();
        let (out, moved) = scrub_arguments(&args);
        assert_eq!(
            out,
            [
                "redis-server",
                "--requirepass",
                "$(ARG_REQUIREPASS)",
                "--port=6379"
            ]
        );
        assert_eq!(moved[0].variable, "ARG_REQUIREPASS");
        assert_eq!(moved[0].value, "hunter2hunter2");
        let (out, moved) = scrub_arguments(&["--api-key=abc".to_string()]);
        assert_eq!(out, ["--api-key=$(ARG_API_KEY)"]);
        assert_eq!(moved.len(), 1);
        let (out, moved) = scrub_arguments(&["serve".to_string(), "--verbose".to_string()]);
        assert_eq!(out, ["serve", "--verbose"]);
        assert!(moved.is_empty());
    }
}
