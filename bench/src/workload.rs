//! The shared `accounts` workload, as SQL text both hindsight and PostgreSQL run.
//!
//! ```text
//! accounts(id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, note TEXT NOT NULL)
//! load:   N rows (id, 1000, 'seed-<id>'), ids 1..=N
//! update: UPDATE accounts SET balance = balance + 1 WHERE id = k   (k uniform in 1..=N)
//! ```
//!
//! After T successful updates the balances sum to `N * 1000 + T`, which every workload checks.

use rand::Rng;
use std::fmt::Write as _;
use std::ops::RangeInclusive;

/// Every row's balance after the load.
pub const SEED_BALANCE: i64 = 1000;
/// Rows per multi-row INSERT statement while loading.
pub const LOAD_ROWS_PER_STATEMENT: u64 = 1_000;
/// INSERT statements per load transaction (so 100,000 rows per commit).
pub const LOAD_STATEMENTS_PER_TXN: u64 = 100;
/// Seed of the first writer's key generator; writer `w` uses `UPDATE_SEED + w`, so runs with the
/// same options update the same keys in the same order per writer.
pub const UPDATE_SEED: u64 = 0x6869_6e64_7369_6768;

/// The table definition.
pub const CREATE_ACCOUNTS: &str =
    "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, note TEXT NOT NULL)";

/// One load transaction for the ids in `ids`: `BEGIN; INSERT …; …; COMMIT`, with
/// [`LOAD_ROWS_PER_STATEMENT`] rows per INSERT.
pub fn load_txn_sql(ids: RangeInclusive<u64>) -> String {
    let (first, last) = (*ids.start(), *ids.end());
    let mut sql = String::with_capacity(((last - first + 1) * 32) as usize + 64);
    sql.push_str("BEGIN;\n");
    let mut id = first;
    while id <= last {
        let stmt_last = (id + LOAD_ROWS_PER_STATEMENT - 1).min(last);
        sql.push_str("INSERT INTO accounts (id, balance, note) VALUES ");
        for k in id..=stmt_last {
            if k > id {
                sql.push(',');
            }
            let _ = write!(sql, "({k},{SEED_BALANCE},'seed-{k}')");
        }
        sql.push_str(";\n");
        id = stmt_last + 1;
    }
    sql.push_str("COMMIT");
    sql
}

/// The id ranges of the load transactions for `rows` rows.
pub fn load_txn_ranges(rows: u64) -> impl Iterator<Item = RangeInclusive<u64>> {
    let per_txn = LOAD_ROWS_PER_STATEMENT * LOAD_STATEMENTS_PER_TXN;
    (0..rows.div_ceil(per_txn)).map(move |i| (i * per_txn + 1)..=((i + 1) * per_txn).min(rows))
}

/// The update of one random account.
pub fn update_sql(rng: &mut impl Rng, rows: u64) -> String {
    let k = rng.gen_range(1..=rows);
    format!("UPDATE accounts SET balance = balance + 1 WHERE id = {k}")
}

/// The balance sum expected after `txns` successful updates of `rows` accounts.
pub fn expected_balance_sum(rows: u64, txns: u64) -> i64 {
    rows as i64 * SEED_BALANCE + txns as i64
}

/// How many of `total` items worker `w` of `workers` takes (the first `total % workers` take one
/// more).
pub fn share(total: u64, workers: usize, w: usize) -> u64 {
    let workers = workers as u64;
    total / workers + u64::from((w as u64) < total % workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_ranges_cover_every_row_once() {
        let ranges: Vec<_> = load_txn_ranges(250_001).collect();
        assert_eq!(ranges, vec![1..=100_000, 100_001..=200_000, 200_001..=250_001]);
        assert_eq!(load_txn_ranges(0).count(), 0);
    }

    #[test]
    fn load_sql_has_one_insert_per_thousand_rows() {
        let sql = load_txn_sql(1..=2_500);
        assert!(sql.starts_with("BEGIN;") && sql.ends_with("COMMIT"));
        assert_eq!(sql.matches("INSERT INTO").count(), 3);
        assert!(sql.contains("(2500,1000,'seed-2500');"));
        assert_eq!(sql.matches("'seed-").count(), 2_500);
    }

    #[test]
    fn shares_add_up() {
        for (total, workers) in [(200_000, 4), (10, 3), (2, 16)] {
            assert_eq!((0..workers).map(|w| share(total, workers, w)).sum::<u64>(), total);
        }
    }
}
