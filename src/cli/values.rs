//! The value parsers every numeric flag goes through, so a value out of range (NaN,
//! infinity, a negative rate, a zero batch) is refused while the command line is
//! parsed: clap names the flag and exits with 2, before any work starts.

use clap::builder::{RangedU64ValueParser, TypedValueParser};

/// A finite `f64` in `[min, max]`; `min_open` excludes `min` itself.
fn bounded_f64(text: &str, min: f64, min_open: bool, max: f64) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    let low = if min_open { "above" } else { "at least" };
    if !v.is_finite() || v < min || (min_open && v == min) || v > max {
        return Err(format!(
            "{text} is out of range: give a number {low} {min} and at most {max}"
        ));
    }
    Ok(v)
}

/// Step sizes: above 0, at most 10 (past that every head diverges at once).
pub fn learning_rate(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, true, 10.0)
}

/// A penalty or factor that may be 0: 0 to 10.
pub fn penalty(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 10.0)
}

/// A score threshold strictly between 0 and 1 (`--unknown-below`): at 0 nothing would
/// be refused, at 1 everything.
pub fn probability_open(text: &str) -> Result<f32, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(v > 0.0 && v < 1.0) {
        return Err(format!(
            "{text} is out of range: give a number above 0 and below 1"
        ));
    }
    Ok(v as f32)
}

/// `graft train --unknown-below`: a threshold as [`probability_open`], or `auto`.
pub fn unknown_below(text: &str) -> Result<graft::openset::UnknownBelow, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(graft::openset::UnknownBelow::Auto);
    }
    probability_open(text)
        .map(graft::openset::UnknownBelow::At)
        .map_err(|e| format!("{e}, or auto"))
}

/// A fraction: 0 to 1.
pub fn fraction(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 1.0)
}

/// A percentage: 0 to 100.
pub fn percentage(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 100.0)
}

/// A percentage held as `f32` (the distortion flags).
pub fn percentage_f32(text: &str) -> Result<f32, String> {
    percentage(text).map(|v| v as f32)
}

/// Degrees of rotation either way: 0 to 180.
pub fn degrees(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 180.0)
}

/// Shear angle in degrees: 0 to 89 (at 90 the image degenerates).
pub fn shear_degrees(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 89.0)
}

/// A shift: a fraction of the side below 1, a number of pixels from 1 up.
pub fn shift(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 100_000.0)
}

/// Zoom range z (factors from 1 - z to 1 + z): 0 to 0.95, as a factor must stay above 0.
pub fn zoom(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 0.95)
}

/// A grey level: 0 to 255.
pub fn grey_level(text: &str) -> Result<f64, String> {
    bounded_f64(text, 0.0, false, 255.0)
}

/// A brightness factor range `A,B` with 0 <= A <= B <= 10.
pub fn brightness_pair(text: &str) -> Result<(f64, f64), String> {
    let shape = || format!("{text:?} is not two numbers A,B such as 0.8,1.2");
    let (a, b) = text.split_once(',').ok_or_else(shape)?;
    let (a, b) = (penalty(a)?, penalty(b)?);
    if a > b {
        return Err(format!("{text}: A must not be above B"));
    }
    Ok((a, b))
}

/// A count of at least 1 (steps, batch sizes, class sizes, images).
pub fn count() -> impl TypedValueParser<Value = usize> {
    RangedU64ValueParser::<usize>::new().range(1..=u32::MAX as u64)
}

/// A `u64` count of at least 1.
pub fn count_u64() -> impl TypedValueParser<Value = u64> {
    RangedU64ValueParser::<u64>::new().range(1..)
}

/// A batch of images per forward pass: 1 to 4096.
pub fn batch_size() -> impl TypedValueParser<Value = usize> {
    RangedU64ValueParser::<usize>::new().range(1..=4096)
}

/// `--tta N`: 1 to the number of test-time views (the library says which views).
pub fn tta(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    graft::predict::check_tta(n).map_err(|e| e.to_string())
}

/// JPEG quality: 1 to 100.
pub fn jpeg_quality() -> impl TypedValueParser<Value = u8> {
    RangedU64ValueParser::<u8>::new().range(1..=100)
}

/// An image count that may also be -1, for "all of them".
pub fn count_or_all(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(-1) => Ok(-1),
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{text} is out of range: give -1 (all) or a count of at least 1"
        )),
    }
}

/// Refuses a combination of flags that each parsed fine, the way clap refuses a bad
/// value: the message on stderr, exit code 2.
/// `extract --shard I/N`.
pub fn shard(text: &str) -> Result<graft::dataset::shard::Shard, String> {
    text.parse().map_err(|e: graft::error::Error| e.to_string())
}

pub fn refuse(message: String) -> ! {
    use clap::CommandFactory;
    super::Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_and_out_of_range_numbers_are_refused() {
        for bad in ["nan", "NaN", "inf", "-inf", "1e300", "-1", "0", "abc", ""] {
            assert!(learning_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(learning_rate("0.01"), Ok(0.01));
        assert!(penalty("nan").is_err());
        assert_eq!(penalty("0"), Ok(0.0));
        assert!(percentage("100.5").is_err());
        assert!(brightness_pair("1.2,0.8").is_err());
        assert_eq!(brightness_pair("0.8,1.2"), Ok((0.8, 1.2)));
        assert_eq!(count_or_all("-1"), Ok(-1));
        assert!(count_or_all("0").is_err());
        assert!(count_or_all("-2").is_err());
    }
}
