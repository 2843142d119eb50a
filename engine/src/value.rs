//! Column types, values, primary keys and the compact row encoding.
//!
//! Rows are stored and logged in one encoding, so replay copies bytes from a WAL record into the
//! store without decoding them and the digest hashes the same bytes.
//!
//! Row layout (columns in table order):
//!
//! | null bitmap, ceil(n/8) bytes (bit i set = column i is NULL) | value of each non-NULL column |
//!
//! | type      | value encoding                                  |
//! |-----------|-------------------------------------------------|
//! | BIGINT    | zigzag LEB128 varint                            |
//! | TIMESTAMP | zigzag LEB128 varint, microseconds since epoch  |
//! | DOUBLE    | 8 bytes, IEEE 754 little-endian                 |
//! | TEXT      | LEB128 varint byte length, then UTF-8 bytes     |
//! | BOOLEAN   | 1 byte, 0 or 1                                  |
//!
//! A key (in delete changes) is the primary-key column's value encoding alone.

use crate::error::{ErrorCode, SqlError};
use std::cmp::Ordering;
use std::fmt;

/// The longest encoded row; larger rows are refused with `program_limit_exceeded`.
pub const ROW_LEN_MAX: usize = 64 * 1024;
/// The most columns in one table.
pub const COLUMNS_MAX: usize = 1024;

/// A column type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// 64-bit signed integer (`BIGINT`, `INT`, `INTEGER`).
    BigInt,
    /// 64-bit IEEE float (`DOUBLE`, `DOUBLE PRECISION`, `FLOAT`, `REAL`).
    Double,
    /// UTF-8 text (`TEXT`, `VARCHAR`).
    Text,
    /// `BOOLEAN`.
    Boolean,
    /// Microseconds since the Unix epoch, UTC (`TIMESTAMP`).
    Timestamp,
}

impl DataType {
    /// The SQL name.
    pub fn name(self) -> &'static str {
        match self {
            DataType::BigInt => "BIGINT",
            DataType::Double => "DOUBLE",
            DataType::Text => "TEXT",
            DataType::Boolean => "BOOLEAN",
            DataType::Timestamp => "TIMESTAMP",
        }
    }

    /// The one-byte tag used in WAL and snapshot encodings.
    pub fn tag(self) -> u8 {
        match self {
            DataType::BigInt => 1,
            DataType::Double => 2,
            DataType::Text => 3,
            DataType::Boolean => 4,
            DataType::Timestamp => 5,
        }
    }

    /// The type of a tag, if valid.
    pub fn from_tag(tag: u8) -> Option<DataType> {
        Some(match tag {
            1 => DataType::BigInt,
            2 => DataType::Double,
            3 => DataType::Text,
            4 => DataType::Boolean,
            5 => DataType::Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One SQL value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// BIGINT.
    Int(i64),
    /// DOUBLE.
    Double(f64),
    /// TEXT.
    Text(String),
    /// BOOLEAN.
    Bool(bool),
    /// TIMESTAMP, microseconds since the Unix epoch.
    Timestamp(i64),
}

impl Value {
    /// The value's type; `None` for NULL.
    pub fn data_type(&self) -> Option<DataType> {
        Some(match self {
            Value::Null => return None,
            Value::Int(_) => DataType::BigInt,
            Value::Double(_) => DataType::Double,
            Value::Text(_) => DataType::Text,
            Value::Bool(_) => DataType::Boolean,
            Value::Timestamp(_) => DataType::Timestamp,
        })
    }

    /// A total order for sorting (NULLs first, numbers compared across BIGINT and DOUBLE).
    pub fn sort_cmp(&self, other: &Value) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Null, _) => Ordering::Less,
            (_, Null) => Ordering::Greater,
            (Int(a), Int(b)) | (Timestamp(a), Timestamp(b)) => a.cmp(b),
            (Int(a), Double(b)) => (*a as f64).total_cmp(b),
            (Double(a), Int(b)) => a.total_cmp(&(*b as f64)),
            (Double(a), Double(b)) => a.total_cmp(b),
            (Text(a), Text(b)) => a.cmp(b),
            (Bool(a), Bool(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Double(_) => 2,
            Value::Timestamp(_) => 3,
            Value::Text(_) => 4,
        }
    }

    /// The key form of a non-NULL value.
    pub fn to_key(&self) -> Option<Key> {
        Some(match self {
            Value::Null => return None,
            Value::Int(v) | Value::Timestamp(v) => Key::Int(*v),
            Value::Double(v) => Key::Double(OrdF64(*v)),
            Value::Text(v) => Key::Text(v.as_str().into()),
            Value::Bool(v) => Key::Bool(*v),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::Text(v) => f.write_str(v),
            Value::Bool(v) => f.write_str(if *v { "true" } else { "false" }),
            Value::Timestamp(v) => f.write_str(&format_timestamp(*v)),
        }
    }
}

/// An f64 with a total order, for DOUBLE primary keys.
#[derive(Clone, Copy, Debug)]
pub struct OrdF64(pub f64);

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A primary-key value. All keys of one table have the same variant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// BIGINT and TIMESTAMP keys.
    Int(i64),
    /// DOUBLE keys.
    Double(OrdF64),
    /// BOOLEAN keys.
    Bool(bool),
    /// TEXT keys.
    Text(Box<str>),
}

impl std::hash::Hash for OrdF64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

impl Key {
    /// The key as a value of the column's type.
    pub fn to_value(&self, ty: DataType) -> Value {
        match (self, ty) {
            (Key::Int(v), DataType::Timestamp) => Value::Timestamp(*v),
            (Key::Int(v), _) => Value::Int(*v),
            (Key::Double(v), _) => Value::Double(v.0),
            (Key::Bool(v), _) => Value::Bool(*v),
            (Key::Text(v), _) => Value::Text(v.to_string()),
        }
    }

    /// Appends the key's value encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Key::Int(v) => put_ivarint(out, *v),
            Key::Double(v) => out.extend_from_slice(&v.0.to_le_bytes()),
            Key::Bool(v) => out.push(u8::from(*v)),
            Key::Text(v) => {
                put_uvarint(out, v.len() as u64);
                out.extend_from_slice(v.as_bytes());
            }
        }
    }

    /// Decodes a key of type `ty` from the front of `buf`, returning it and the bytes used.
    pub fn decode(ty: DataType, buf: &[u8]) -> Result<(Key, usize), CodecError> {
        let mut r = Reader::new(buf);
        let key = match r.value(ty)? {
            Value::Null => return Err(CodecError("NULL key")),
            v => v.to_key().ok_or(CodecError("NULL key"))?,
        };
        Ok((key, r.pos))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(v) => write!(f, "{v}"),
            Key::Double(v) => write!(f, "{}", v.0),
            Key::Bool(v) => write!(f, "{v}"),
            Key::Text(v) => write!(f, "'{v}'"),
        }
    }
}

/// A decoding failure of a row, key or varint: the bytes are not what the schema says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed encoding: {0}")]
pub struct CodecError(pub &'static str);

/// Appends an unsigned LEB128 varint.
#[inline]
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a zigzag LEB128 varint.
#[inline]
pub fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over encoded bytes that never panics on malformed input.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    /// Bytes consumed so far.
    pub pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// An unsigned varint.
    #[inline]
    pub fn uvarint(&mut self) -> Result<u64, CodecError> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(CodecError("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(CodecError("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(CodecError("varint too long"));
            }
        }
    }

    /// A zigzag varint.
    #[inline]
    pub fn ivarint(&mut self) -> Result<i64, CodecError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A varint that must fit a `usize` no larger than `max`.
    pub fn len(&mut self, max: usize) -> Result<usize, CodecError> {
        let v = self.uvarint()?;
        if v > max as u64 {
            return Err(CodecError("length past its limit"));
        }
        Ok(v as usize)
    }

    /// `n` raw bytes.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError("truncated bytes"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.bytes(1)?[0])
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: usize) -> Result<&'a str, CodecError> {
        let n = self.len(max)?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| CodecError("invalid UTF-8"))
    }

    /// One non-NULL value of type `ty`.
    pub fn value(&mut self, ty: DataType) -> Result<Value, CodecError> {
        Ok(match ty {
            DataType::BigInt => Value::Int(self.ivarint()?),
            DataType::Timestamp => Value::Timestamp(self.ivarint()?),
            DataType::Double => {
                Value::Double(f64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
            }
            DataType::Text => Value::Text(self.string(ROW_LEN_MAX)?.to_string()),
            DataType::Boolean => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(CodecError("boolean byte is not 0 or 1")),
            },
        })
    }

    /// Skips one non-NULL value of type `ty`.
    fn skip_value(&mut self, ty: DataType) -> Result<(), CodecError> {
        match ty {
            DataType::BigInt | DataType::Timestamp => {
                self.uvarint()?;
            }
            DataType::Double => {
                self.bytes(8)?;
            }
            DataType::Text => {
                let n = self.len(ROW_LEN_MAX)?;
                self.bytes(n)?;
            }
            DataType::Boolean => {
                self.u8()?;
            }
        }
        Ok(())
    }
}

/// Encodes `values` (one per column, already checked against `types`) as a row.
pub fn encode_row(types: &[DataType], values: &[Value], out: &mut Vec<u8>) -> Result<(), SqlError> {
    assert_eq!(types.len(), values.len(), "row arity must match the table");
    let bitmap_len = types.len().div_ceil(8);
    let start = out.len();
    out.resize(start + bitmap_len, 0);
    for (i, (ty, v)) in types.iter().zip(values).enumerate() {
        match (ty, v) {
            (_, Value::Null) => out[start + i / 8] |= 1 << (i % 8),
            (DataType::BigInt, Value::Int(x)) | (DataType::Timestamp, Value::Timestamp(x)) => {
                put_ivarint(out, *x)
            }
            (DataType::Double, Value::Double(x)) => out.extend_from_slice(&x.to_le_bytes()),
            (DataType::Text, Value::Text(s)) => {
                put_uvarint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            (DataType::Boolean, Value::Bool(b)) => out.push(u8::from(*b)),
            _ => panic!("value {v:?} was not coerced to column type {ty}"),
        }
    }
    if out.len() - start > ROW_LEN_MAX {
        return Err(SqlError::new(
            ErrorCode::ProgramLimitExceeded,
            format!("row of {} bytes is longer than the limit of {ROW_LEN_MAX} bytes", out.len() - start),
        ));
    }
    Ok(())
}

/// Decodes a whole row of `types`.
pub fn decode_row(types: &[DataType], buf: &[u8]) -> Result<Vec<Value>, CodecError> {
    let bitmap_len = types.len().div_ceil(8);
    let mut r = Reader::new(buf);
    let bitmap = r.bytes(bitmap_len)?;
    let mut values = Vec::with_capacity(types.len());
    for (i, ty) in types.iter().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            values.push(Value::Null);
        } else {
            values.push(r.value(*ty)?);
        }
    }
    if !r.is_empty() {
        return Err(CodecError("trailing bytes after row"));
    }
    Ok(values)
}

/// Checks that `buf` is a well-formed row of `types` without allocating.
pub fn validate_row(types: &[DataType], buf: &[u8]) -> Result<(), CodecError> {
    let bitmap_len = types.len().div_ceil(8);
    let mut r = Reader::new(buf);
    let bitmap = r.bytes(bitmap_len)?;
    for (i, ty) in types.iter().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) == 0 {
            match ty {
                DataType::Text => {
                    let n = r.len(ROW_LEN_MAX)?;
                    std::str::from_utf8(r.bytes(n)?).map_err(|_| CodecError("invalid UTF-8"))?;
                }
                DataType::Boolean => {
                    if r.u8()? > 1 {
                        return Err(CodecError("boolean byte is not 0 or 1"));
                    }
                }
                _ => r.skip_value(*ty)?,
            }
        }
    }
    if !r.is_empty() {
        return Err(CodecError("trailing bytes after row"));
    }
    Ok(())
}

/// Extracts the primary key (column `pk` of `types`) from an encoded row without decoding the
/// rest. The key column is never NULL.
#[inline]
pub fn row_key(types: &[DataType], pk: usize, buf: &[u8]) -> Result<Key, CodecError> {
    let bitmap_len = types.len().div_ceil(8);
    let mut r = Reader::new(buf);
    let bitmap = r.bytes(bitmap_len)?;
    for (i, ty) in types.iter().enumerate().take(pk) {
        if bitmap[i / 8] & (1 << (i % 8)) == 0 {
            r.skip_value(*ty)?;
        }
    }
    if bitmap[pk / 8] & (1 << (pk % 8)) != 0 {
        return Err(CodecError("NULL primary key"));
    }
    let rest = &buf[r.pos..];
    Ok(Key::decode(types[pk], rest)?.0)
}

/// Formats microseconds since the epoch as RFC 3339 UTC, e.g. `2026-11-21T13:25:27.500000Z`.
pub fn format_timestamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let base = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60);
    if frac == 0 {
        format!("{base}Z")
    } else {
        format!("{base}.{frac:06}Z")
    }
}

/// Parses RFC 3339 / SQL timestamps: `2026-11-21T13:25:27.5Z`, `2026-11-21 13:25:27+01`,
/// `2026-11-21 13:25:27` (UTC), `2026-11-21`. Returns microseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let t = text.trim();
    let (date, rest) = if t.len() >= 10 { t.split_at(10) } else { return None };
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || parts.next().is_some() {
        return None;
    }
    let mut micros = days_from_civil(y, m, d) * 86_400_000_000;
    let rest = rest.trim_start_matches(['T', 't', ' ']);
    if rest.is_empty() {
        return Some(micros);
    }
    // hh:mm[:ss[.ffffff]] then optional zone: Z | +hh[:mm] | -hh[:mm]
    let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let mut c = clock.trim().split(':');
    let hh: i64 = c.next()?.parse().ok()?;
    let mm: i64 = c.next()?.parse().ok()?;
    let (ss, frac) = match c.next() {
        None => (0, 0),
        Some(s) => {
            let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
            let ss: i64 = whole.parse().ok()?;
            if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mut f = 0i64;
            for (i, b) in frac.bytes().take(6).enumerate() {
                f += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
            }
            (ss, f)
        }
    };
    if c.next().is_some() || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    micros += ((hh * 60 + mm) * 60 + ss) * 1_000_000 + frac;
    let zone = zone.trim();
    if zone.is_empty() || zone.eq_ignore_ascii_case("z") {
        return Some(micros);
    }
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let z = &zone[1..];
    let (zh, zm) = match z.split_once(':') {
        Some((h, m)) => (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?),
        None if z.len() == 4 => (z[..2].parse().ok()?, z[2..].parse().ok()?),
        None => (z.parse().ok()?, 0),
    };
    Some(micros - sign * (zh * 3600 + zm * 60) * 1_000_000)
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_key_extracts() {
        let types =
            [DataType::Text, DataType::BigInt, DataType::Double, DataType::Boolean, DataType::Timestamp];
        let values = vec![
            Value::Text("héllo".into()),
            Value::Int(-42),
            Value::Null,
            Value::Bool(true),
            Value::Timestamp(7),
        ];
        let mut buf = Vec::new();
        encode_row(&types, &values, &mut buf).unwrap();
        assert_eq!(decode_row(&types, &buf).unwrap(), values);
        assert_eq!(row_key(&types, 1, &buf).unwrap(), Key::Int(-42));
        assert_eq!(row_key(&types, 0, &buf).unwrap(), Key::Text("héllo".into()));
        assert!(row_key(&types, 2, &buf).is_err(), "NULL key column");
        for cut in 0..buf.len() {
            assert!(decode_row(&types, &buf[..cut]).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn varints_round_trip_extremes() {
        for v in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN] {
            let mut b = Vec::new();
            put_ivarint(&mut b, v);
            assert_eq!(Reader::new(&b).ivarint().unwrap(), v);
        }
        assert!(Reader::new(&[0xFF; 11]).uvarint().is_err());
    }

    #[test]
    fn timestamps_parse_and_format() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        let t = parse_timestamp("2026-11-21T13:25:27.5Z").unwrap();
        assert_eq!(format_timestamp(t), "2026-11-21T13:25:27.500000Z");
        assert_eq!(parse_timestamp("2026-11-21 14:25:27.5+01"), Some(t));
        assert_eq!(parse_timestamp("2026-11-21 12:25:27.5-01:00"), Some(t));
        assert_eq!(parse_timestamp("2026-11-21"), Some(t - (13 * 3600 + 25 * 60 + 27) * 1_000_000 - 500_000));
        assert_eq!(parse_timestamp("not a time"), None);
        assert_eq!(parse_timestamp("2026-13-01"), None);
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999999Z");
    }
}
