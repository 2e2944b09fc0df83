//! The `sql` observer: every query in a read-only transaction under the read-only role
//! `pg_read_all_data` with a 10 s statement timeout, on connections of a pool kept between
//! evaluations (a new connection cost the demo's evaluation about 90 ms: the SCRAM exchange
//! waits twice on delayed ACKs, as sqlx does not set TCP_NODELAY). A database's queries are
//! shared among up to [`CONNECTIONS`] of its pooled connections at once. A query that fails
//! aborts its transaction: it is rolled back and the queries after it run in a new one, so one
//! failing query leaves the others observed (no savepoint per query: that was a round trip
//! more for every query).

use std::collections::HashMap;

use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

use crate::observation::Observation;

/// Most connections one database's queries use at once.
pub const CONNECTIONS: usize = 3;
/// Fewest queries worth a connection of their own.
const PER_CONNECTION: usize = 16;

/// Runs `(id, query)` pairs on one database and returns one observation per id. Each query
/// must return one row with one column.
pub async fn observe(pool: &PgPool, queries: &[(&str, &str)]) -> HashMap<String, Observation> {
    let runs = queries
        .chunks(chunk_size(queries.len()))
        .map(|chunk| async move {
            match run(pool, chunk).await {
                Ok(observed) => observed,
                Err(reason) => chunk
                    .iter()
                    .map(|(id, _)| (id.to_string(), Observation::failed(reason.clone())))
                    .collect(),
            }
        });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How many queries each connection runs: at least [`PER_CONNECTION`], on at most
/// [`CONNECTIONS`] connections.
fn chunk_size(queries: usize) -> usize {
    queries.div_ceil(CONNECTIONS).max(PER_CONNECTION)
}

/// A read-only transaction under `pg_read_all_data` on a connection of `pool`. Whatever ends
/// it (rollback, an error, a drop), the connection goes back to the pool as it came: sqlx rolls
/// back a transaction dropped unfinished before the connection is used again.
async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, String> {
    let mut tx = pool
        .begin_with("BEGIN READ ONLY")
        .await
        .map_err(|e| format!("failed to connect: {e}"))?;
    sqlx::raw_sql("SET LOCAL statement_timeout = '10s'; SET LOCAL ROLE pg_read_all_data")
        .execute(&mut *tx)
        .await
        .map_err(|e| format!("failed to take the read-only role pg_read_all_data: {e}"))?;
    Ok(tx)
}

async fn run(
    pool: &PgPool,
    queries: &[(&str, &str)],
) -> Result<HashMap<String, Observation>, String> {
    let mut tx = begin(pool).await?;
    let mut observed = HashMap::with_capacity(queries.len());
    for (id, query) in queries {
        let wrapped = format!(
            "SELECT row_to_json(q)::text FROM ({}) AS q LIMIT 2",
            query.trim().trim_end_matches(';')
        );
        // The catalogue's own query, on purpose: it runs as one prepared statement (no second
        // statement can follow) inside a READ ONLY transaction under a role that can only read.
        let observation = match sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(wrapped))
            .fetch_all(&mut *tx)
            .await
        {
            Ok(rows) => scalar(&rows),
            Err(e) => {
                tx.rollback()
                    .await
                    .map_err(|e| format!("failed to roll back a query: {e}"))?;
                tx = begin(pool).await?;
                Observation::failed(format!("query failed: {}", describe(&e)))
            }
        };
        observed.insert(id.to_string(), observation);
    }
    let _ = tx.rollback().await;
    Ok(observed)
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// The one value of one row with one column.
fn scalar(rows: &[String]) -> Observation {
    match rows {
        [] => Observation::failed("the query returned no row"),
        [row] => match serde_json::from_str::<Value>(row) {
            Ok(Value::Object(map)) if map.len() == 1 => Observation::value(
                map.into_iter()
                    .next()
                    .map(|(_, v)| v)
                    .unwrap_or(Value::Null),
            ),
            Ok(Value::Object(map)) => Observation::failed(format!(
                "the query returned {} columns; return one",
                map.len()
            )),
            _ => Observation::failed("the query's row could not be read"),
        },
        _ => Observation::failed("the query returned more than one row; return one"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_row_one_column() {
        assert_eq!(
            scalar(&[r#"{"count": 227}"#.to_string()]),
            Observation::value(json!(227))
        );
        assert!(scalar(&[]).value.is_err());
        assert!(scalar(&[r#"{"a": 1, "b": 2}"#.to_string()]).value.is_err());
        assert!(scalar(&["{}".to_string(), "{}".to_string()]).value.is_err());
    }

    #[test]
    fn queries_share_at_most_three_connections_of_at_least_sixteen_each() {
        assert_eq!(chunk_size(1), PER_CONNECTION);
        assert_eq!(chunk_size(16), PER_CONNECTION);
        assert_eq!(84_usize.div_ceil(chunk_size(84)), 3);
        assert_eq!(40_usize.div_ceil(chunk_size(40)), 3);
        assert_eq!(20_usize.div_ceil(chunk_size(20)), 2);
        assert_eq!(1000_usize.div_ceil(chunk_size(1000)), CONNECTIONS);
    }
}
