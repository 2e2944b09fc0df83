//! Kubernetes resource quantities (`500m`, `2`, `8Gi`) parsed to exact integers and printed
//! back, for capacity arithmetic.

use std::fmt;

/// A quantity in thousandths of its unit: millicores for CPU, millibytes for memory. Exact for
/// every quantity Kubernetes accepts down to `1m`; finer values round up, as Kubernetes does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i128);

/// Longest text read as a quantity.
const MAX_TEXT: usize = 64;
/// Largest decimal exponent (`1e18`) a quantity may carry; Kubernetes allows up to `E` (10^18).
const MAX_EXPONENT: i32 = 30;

/// A quantity string that is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity (examples: 500m, 2, 1.5, 256Mi, 8Gi)")]
pub struct InvalidQuantity(pub String);

impl Milli {
    /// Zero.
    pub const ZERO: Milli = Milli(0);
    /// The largest magnitude parsed: what Kubernetes itself can hold (2^63 - 1 units).
    pub const MAX: Milli = Milli(i64::MAX as i128 * 1000);

    /// Parses a quantity such as `250m`, `1.5`, `2e3`, `128Mi` or `1G`.
    pub fn parse(text: &str) -> Result<Milli, InvalidQuantity> {
        let invalid = || InvalidQuantity(text.to_string());
        let s = text.trim();
        if s.len() > MAX_TEXT {
            return Err(invalid());
        }
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        // value = digits / 10^scale
        let digits: String = format!("{whole}{fraction}");
        let mut mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| invalid())?
        };
        let mut scale = i32::try_from(fraction.len()).map_err(|_| invalid())?;
        let (mul, exp10): (i128, i32) = match suffix {
            "" => (1, 0),
            "n" => (1, -9),
            "u" => (1, -6),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            other => {
                let exp = other
                    .strip_prefix(['e', 'E'])
                    .and_then(|e| e.parse::<i32>().ok())
                    .filter(|e| (-MAX_EXPONENT..=MAX_EXPONENT).contains(e))
                    .ok_or_else(invalid)?;
                (1, exp)
            }
        };
        mantissa = mantissa.checked_mul(mul).ok_or_else(invalid)?;
        // Convert to thousandths: multiply by 10^(3 + exp10 - scale).
        scale = scale
            .checked_sub(3 + exp10)
            .filter(|s| s.unsigned_abs() <= 64)
            .ok_or_else(invalid)?;
        let value = if scale <= 0 {
            10i128
                .checked_pow(scale.unsigned_abs())
                .and_then(|p| mantissa.checked_mul(p))
                .ok_or_else(invalid)?
        } else {
            let divisor = 10i128
                .checked_pow(scale.unsigned_abs())
                .ok_or_else(invalid)?;
            mantissa.checked_add(divisor - 1).ok_or_else(invalid)? / divisor
        };
        if value > Milli::MAX.0 {
            return Err(invalid());
        }
        Ok(Milli(if negative { -value } else { value }))
    }

    /// Formats as CPU: whole cores when exact (`4`), millicores otherwise (`3500m`).
    pub fn cpu(self) -> String {
        if self.0 % 1000 == 0 {
            format!("{}", self.0 / 1000)
        } else {
            format!("{}m", self.0)
        }
    }

    /// Formats as memory in the largest binary unit that is exact (`8Gi`, `512Mi`, `100`).
    pub fn memory(self) -> String {
        let bytes = self.0 / 1000;
        let units = [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ];
        for (suffix, shift) in units {
            let unit = 1i128 << shift;
            if bytes != 0 && bytes % unit == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
        }
        // Not exact in a binary unit: one decimal of the largest unit that fits.
        for (suffix, shift) in units {
            let unit = 1i128 << shift;
            if bytes.abs() >= unit {
                return format!("{:.1}{suffix}", bytes as f64 / unit as f64);
            }
        }
        format!("{bytes}")
    }

    /// Formats as a plain count (`1` GPU).
    pub fn count(self) -> String {
        self.cpu()
    }
}

impl std::ops::Add for Milli {
    type Output = Milli;
    fn add(self, other: Milli) -> Milli {
        Milli(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Milli {
    fn add_assign(&mut self, other: Milli) {
        self.0 = self.0.saturating_add(other.0);
    }
}

impl std::ops::Sub for Milli {
    type Output = Milli;
    fn sub(self, other: Milli) -> Milli {
        Milli(self.0.saturating_sub(other.0))
    }
}

impl std::ops::Mul<i128> for Milli {
    type Output = Milli;
    fn mul(self, n: i128) -> Milli {
        Milli(self.0.saturating_mul(n))
    }
}

impl std::iter::Sum for Milli {
    fn sum<I: Iterator<Item = Milli>>(iter: I) -> Milli {
        iter.fold(Milli::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_quantities() {
        assert_eq!(Milli::parse("500m"), Ok(Milli(500)));
        assert_eq!(Milli::parse("2"), Ok(Milli(2000)));
        assert_eq!(Milli::parse("1.5"), Ok(Milli(1500)));
        assert_eq!(Milli::parse("0.1"), Ok(Milli(100)));
        assert_eq!(Milli::parse("100u"), Ok(Milli(1)), "sub-milli rounds up");
        assert_eq!(Milli::parse("-1"), Ok(Milli(-1000)));
    }

    #[test]
    fn parses_memory_quantities() {
        assert_eq!(Milli::parse("8Gi"), Ok(Milli(8 * (1 << 30) * 1000)));
        assert_eq!(Milli::parse("512Mi"), Ok(Milli(512 * (1 << 20) * 1000)));
        assert_eq!(Milli::parse("1G"), Ok(Milli(1_000_000_000_000)));
        assert_eq!(Milli::parse("1e3"), Ok(Milli(1_000_000)));
        assert_eq!(Milli::parse("1.5Gi"), Ok(Milli(3 * (1 << 29) * 1000)));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "m",
            "abc",
            "1.2.3",
            "5Q",
            "1ee3",
            ".",
            // Used to overflow `scale` (a panic with overflow checks on).
            "1e2147483647",
            "1e-2147483648",
            "99999999999999999999999999999999999Ei",
            "1e25",
        ] {
            assert!(Milli::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_cpu_and_memory() {
        assert_eq!(Milli(4000).cpu(), "4");
        assert_eq!(Milli(3500).cpu(), "3500m");
        assert_eq!(Milli(-500).cpu(), "-500m");
        assert_eq!(
            Milli::parse("8Gi").map(Milli::memory),
            Ok("8Gi".to_string())
        );
        assert_eq!(
            Milli::parse("1536Mi").map(Milli::memory),
            Ok("1536Mi".to_string())
        );
        assert_eq!(
            Milli::parse("1000M").map(Milli::memory),
            Ok("953.7Mi".to_string())
        );
        assert_eq!(Milli::ZERO.memory(), "0");
    }

    #[test]
    fn round_trips() {
        for q in ["250m", "2", "64Gi", "100Mi", "1Ki"] {
            let m = Milli::parse(q).unwrap_or_default();
            let back = if q.ends_with('i') {
                m.memory()
            } else {
                m.cpu()
            };
            assert_eq!(back, q);
        }
    }
}
