//! The matcher's records to a function: `replay` prints them, `report`
//! keeps the orphans, `check` only needs the summary the driver returns.

use std::io;

use super::Sink;
use crate::correlate::Record;

pub struct RecordsSink<F>(pub F);

impl<F: FnMut(&Record)> Sink for RecordsSink<F> {
    fn name(&self) -> &'static str {
        "records"
    }

    fn wants_matching(&self) -> bool {
        true
    }

    fn record(&mut self, record: &Record) -> io::Result<()> {
        (self.0)(record);
        Ok(())
    }
}
