//! Batching result rows into `DataRows` messages, so a large result is a few frames rather than
//! one frame per row.

use prost::Message;

use crate::codec::{DATA_ROWS_BATCH_BYTES_TARGET, DATA_ROWS_BATCH_ROWS_MAX};
use crate::wire::{DataRows, Row};

/// Collects the rows of one result set and hands out `DataRows` batches to send.
///
/// A batch is handed out as soon as it holds [`DATA_ROWS_BATCH_ROWS_MAX`] rows or its encoded
/// rows reach [`DATA_ROWS_BATCH_BYTES_TARGET`] bytes; [`DataRowsBatcher::finish`] hands out the
/// rest. Plain data, no I/O: the session loop decides when to write.
///
/// Invariants:
/// - rows come out in the order they went in, each exactly once;
/// - every batch handed out holds at least one row and at most [`DATA_ROWS_BATCH_ROWS_MAX`];
/// - a batch's encoded rows exceed [`DATA_ROWS_BATCH_BYTES_TARGET`] by at most its last row.
#[derive(Debug, Default)]
pub struct DataRowsBatcher {
    /// Rows not yet handed out.
    rows: Vec<Row>,
    /// Their encoded size inside a `DataRows`, field tags and lengths included.
    rows_len_bytes: usize,
}

impl DataRowsBatcher {
    /// An empty batcher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a row; returns a batch to send when this row filled one.
    pub fn push(&mut self, row: Row) -> Option<DataRows> {
        let row_len = row.encoded_len();
        // Tag byte of `DataRows.rows`, the row's length prefix, the row.
        self.rows_len_bytes += 1 + prost::length_delimiter_len(row_len) + row_len;
        self.rows.push(row);
        let full = self.rows.len() >= DATA_ROWS_BATCH_ROWS_MAX
            || self.rows_len_bytes >= DATA_ROWS_BATCH_BYTES_TARGET;
        if full {
            self.take()
        } else {
            None
        }
    }

    /// Hands out the rows not yet handed out, if there are any. Call at the end of the result.
    pub fn finish(&mut self) -> Option<DataRows> {
        self.take()
    }

    /// The rows waiting in the current batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no rows are waiting.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn take(&mut self) -> Option<DataRows> {
        if self.rows.is_empty() {
            return None;
        }
        self.rows_len_bytes = 0;
        Some(DataRows { rows: std::mem::take(&mut self.rows) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FRAME_LEN_MAX;
    use crate::wire::{value, ServerMessage, Value};
    use crate::{decode_frame, encode_frame};

    fn row(id: i64, text_len: usize) -> Row {
        Row {
            values: vec![
                Value { kind: Some(value::Kind::Int64(id)) },
                Value { kind: Some(value::Kind::Text("x".repeat(text_len))) },
                Value { kind: Some(value::Kind::NULL) },
            ],
        }
    }

    /// Pushes every row, finishes, and checks the batches against the invariants.
    fn batch_all(input: &[Row]) -> Vec<DataRows> {
        let mut batcher = DataRowsBatcher::new();
        let mut batches: Vec<DataRows> = input.iter().cloned().filter_map(|r| batcher.push(r)).collect();
        batches.extend(batcher.finish());
        assert!(batcher.is_empty() && batcher.finish().is_none());
        for batch in &batches {
            assert!(!batch.rows.is_empty() && batch.rows.len() <= DATA_ROWS_BATCH_ROWS_MAX);
            let last = batch.rows.last().map_or(0, |r| r.encoded_len() + 8);
            assert!(batch.encoded_len() <= DATA_ROWS_BATCH_BYTES_TARGET + last, "{}", batch.encoded_len());
            assert!(batch.encoded_len() < FRAME_LEN_MAX);
        }
        let output: Vec<Row> = batches.iter().flat_map(|b| b.rows.iter().cloned()).collect();
        assert_eq!(output, input, "rows come out in order, each once");
        batches
    }

    #[test]
    fn ten_thousand_small_rows_are_a_few_frames() {
        let input: Vec<Row> = (0..10_000).map(|id| row(id, 10)).collect();
        let batches = batch_all(&input);
        assert_eq!(batches.len(), 10, "10,000 rows in batches of {DATA_ROWS_BATCH_ROWS_MAX}");
        for batch in batches {
            let frame = encode_frame(&ServerMessage::from(batch.clone())).unwrap();
            assert_eq!(decode_frame::<ServerMessage>(&frame).unwrap(), ServerMessage::from(batch));
        }
    }

    #[test]
    fn wide_rows_are_cut_by_size() {
        let input: Vec<Row> = (0..100).map(|id| row(id, 10_000)).collect();
        let batches = batch_all(&input);
        assert!(batches.len() >= 4 && batches.len() <= 5, "{} batches", batches.len());
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert!(batch_all(&[]).is_empty());
    }
}
