//! The `sql` observer: one connection per database for all its properties, every query in one
//! read-only transaction under the read-only role `pg_read_all_data` with a 10 s statement timeout, each query behind a
//! savepoint so that one failing query leaves the others observed.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::observation::Observation;

/// Runs `(id, query)` pairs on one database and returns one observation per id. Each query
/// must return one row with one column.
pub async fn observe(
    options: &PgConnectOptions,
    queries: &[(&str, &str)],
) -> HashMap<String, Observation> {
    match run(options, queries).await {
        Ok(observed) => observed,
        Err(reason) => queries
            .iter()
            .map(|(id, _)| (id.to_string(), Observation::failed(reason.clone())))
            .collect(),
    }
}

async fn run(
    options: &PgConnectOptions,
    queries: &[(&str, &str)],
) -> Result<HashMap<String, Observation>, String> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|e| format!("failed to connect: {e}"))?;
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| format!("failed to begin: {e}"))?;
    sqlx::raw_sql(
        "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = '10s'; SET LOCAL ROLE pg_read_all_data",
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| format!("failed to take the read-only role pg_read_all_data: {e}"))?;
    let mut observed = HashMap::with_capacity(queries.len());
    for (id, query) in queries {
        sqlx::raw_sql("SAVEPOINT observe")
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("failed to set a savepoint: {e}"))?;
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
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT observe")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| format!("failed to roll back a query: {e}"))?;
                Observation::failed(format!("query failed: {}", describe(&e)))
            }
        };
        observed.insert(id.to_string(), observation);
    }
    let _ = tx.rollback().await;
    let _ = conn.close().await;
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
}
