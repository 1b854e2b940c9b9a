//! Ids to and from database integers (`BIGINT`, signed): a negative id read back is corruption, an
//! id past `i64::MAX` cannot be bound. Beside the id types rather than in them, so `types` stays
//! below `error` (whose variants name ids).

use crate::error::StoreError;
use crate::types::{ClientId, JobId, TokenId};

macro_rules! db_id {
    ($($name:ident),*) => {$(
        impl $name {
            pub(crate) fn from_db(v: i64) -> Result<Self, StoreError> {
                u64::try_from(v).map($name).map_err(|_| {
                    StoreError::Corrupt(format!("negative {} {v}", stringify!($name)))
                })
            }

            #[allow(dead_code)] // not every id is ever bound as a parameter
            pub(crate) fn to_db(self) -> Result<i64, StoreError> {
                i64::try_from(self.0).map_err(|_| {
                    StoreError::InvalidArgument(format!("{} {} out of range", stringify!($name), self.0))
                })
            }
        }
    )*};
}

db_id!(JobId, ClientId, TokenId);
