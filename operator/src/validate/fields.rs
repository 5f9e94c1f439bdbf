//! Checks of single fields shared by every part of validation: names,
//! images, quantities, replica counts, storage. Each resolves a default from
//! the catalogue when the field is unset, then checks the result.

use super::{Invalid, Size};
use ladder_crds::catalogue;
use ladder_crds::scalingphase;

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending
/// with an alphanumeric, at most `max` characters.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Non-empty, at most 255 bytes, alphanumerics and `extra` only.
pub(super) fn is_token(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

fn is_image(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.chars().all(|c| c.is_ascii_graphic())
}

fn is_quantity(s: &str, units: &[&str]) -> bool {
    if s.is_empty() || s.len() > 16 {
        return false;
    }
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && !num.ends_with('.')
        && (unit.is_empty() || units.contains(&unit))
}

/// CPU and memory: the override's, else the default.
pub(super) fn size(
    field: &str,
    r: Option<&scalingphase::Resources>,
    default: &catalogue::Size,
) -> Result<Size, Invalid> {
    let cpu = r
        .and_then(|r| r.cpu.clone())
        .unwrap_or_else(|| default.cpu.to_owned());
    let memory = r
        .and_then(|r| r.memory.clone())
        .unwrap_or_else(|| default.memory.to_owned());
    if !is_quantity(&cpu, &["m"]) {
        return Err(Invalid::field(
            format!("{field}.cpu"),
            "must be a CPU quantity such as 250m or 2",
        ));
    }
    if !is_quantity(&memory, &["Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"]) {
        return Err(Invalid::field(
            format!("{field}.memory"),
            "must be a memory quantity such as 512Mi",
        ));
    }
    Ok(Size { cpu, memory })
}

/// An image reference: the override's, else the default.
pub(super) fn image(field: &str, image: Option<&String>, default: &str) -> Result<String, Invalid> {
    let image = image.cloned().unwrap_or_else(|| default.to_owned());
    if !is_image(&image) {
        return Err(Invalid::field(
            field,
            "must be an image reference without spaces, at most 255 characters",
        ));
    }
    Ok(image)
}

/// Volume size and StorageClass: the override's, else the default size
/// and the cluster's default class.
pub(super) fn storage(
    field: &str,
    s: Option<&scalingphase::Storage>,
    default: &str,
) -> Result<(String, Option<String>), Invalid> {
    let size = s
        .and_then(|s| s.size.clone())
        .unwrap_or_else(|| default.to_owned());
    if !is_quantity(&size, &["Ki", "Mi", "Gi", "Ti"]) {
        return Err(Invalid::field(
            format!("{field}.size"),
            "must be a size such as 20Gi",
        ));
    }
    let class = s.and_then(|s| s.storage_class_name.clone());
    if let Some(c) = &class
        && !(is_dns_label(&c.replace('.', "-"), 253))
    {
        return Err(Invalid::field(
            format!("{field}.storageClassName"),
            "must be a DNS-1123 subdomain",
        ));
    }
    Ok((size, class))
}

/// A count within `min..=max`: the override's, else the default.
pub(super) fn count(
    field: &str,
    value: Option<i32>,
    default: i32,
    min: i32,
    max: i32,
) -> Result<i32, Invalid> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(Invalid::field(
            field,
            format!("must be between {min} and {max} in this phase, got {v}"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("shop-1", 63));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b"] {
            assert!(!is_dns_label(bad, 63), "{bad:?}");
        }
        assert!(!is_dns_label("abc", 2));
    }

    #[test]
    fn quantities() {
        assert!(is_quantity("250m", &["m"]));
        assert!(is_quantity("1.5", &["m"]));
        for bad in ["", "m", "1.", "1x", "1Mi", "12345678901234567"] {
            assert!(!is_quantity(bad, &["m"]), "{bad:?}");
        }
    }

    #[test]
    fn defaults_apply_and_overrides_are_checked() {
        let default = catalogue::Size {
            cpu: "1",
            memory: "1Gi",
        };
        assert_eq!(
            size("f", None, &default),
            Ok(Size {
                cpu: "1".into(),
                memory: "1Gi".into()
            })
        );
        let r = scalingphase::Resources {
            cpu: Some("lots".into()),
            memory: None,
        };
        assert_eq!(
            size("f", Some(&r), &default).map_err(|e| e.to_string()),
            Err("f.cpu: must be a CPU quantity such as 250m or 2".to_owned())
        );
        assert_eq!(image("i", None, "img:1"), Ok("img:1".into()));
        assert!(image("i", Some(&"a b".into()), "img:1").is_err());
        assert_eq!(count("c", None, 3, 1, 5), Ok(3));
        assert!(count("c", Some(6), 3, 1, 5).is_err());
        assert_eq!(storage("s", None, "5Gi"), Ok(("5Gi".into(), None)));
        let s = scalingphase::Storage {
            size: Some("5G".into()),
            storage_class_name: None,
        };
        assert!(storage("s", Some(&s), "5Gi").is_err());
    }
}
