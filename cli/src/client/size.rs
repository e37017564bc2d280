//! Byte sizes as people type them: `4096`, `512M`, `1G`, `1GiB`, `10T`.
//! Every suffix is binary (K = 1024), as for block devices everywhere;
//! `KB`, `MB`, `GB`, `TB` are refused, since other tools read them as
//! decimal (`truncate`, `parted`) and a disk off by 7% is found too late.

/// Parses a size; the message says what was wrong.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let invalid = || {
        format!("invalid size {text:?}: use bytes or a number with K, M, G, T (e.g. 512M, 1GiB)")
    };
    if digits.is_empty() {
        return Err(invalid());
    }
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let suffix = suffix.trim().to_ascii_uppercase();
    let shift = match suffix.as_str() {
        "" | "B" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        "T" | "TIB" => 40,
        "KB" | "MB" | "GB" | "TB" => {
            let binary = &suffix[..1];
            return Err(format!(
                "invalid size {text:?}: {suffix} is decimal to some tools and binary to others; \
                 write {number}{binary} or {number}{binary}iB (binary), or the bytes"
            ));
        }
        _ => return Err(invalid()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// The largest whole binary unit, or bytes: `1 GiB`, `1536 MiB`, `4097 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
    }

    #[test]
    fn suffixes_are_binary_and_case_blind() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
    }

    #[test]
    fn decimal_looking_suffixes_are_refused_with_the_binary_spelling() {
        for ambiguous in ["1KB", "512MB", "1GB", "2tb"] {
            let said = parse_size(ambiguous).unwrap_err();
            assert!(said.contains("decimal to some tools"), "{said}");
        }
        assert!(parse_size("1GB").unwrap_err().contains("write 1G or 1GiB"));
    }

    #[test]
    fn garbage_and_overflow_are_refused() {
        for bad in ["", "G", "-1G", "1.5G", "12Q", "1 G B", "1GG"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1536 << 20), "1536 MiB");
        assert_eq!(format_size(4097), "4097 B");
        assert_eq!(format_size(0), "0 B");
    }
}
