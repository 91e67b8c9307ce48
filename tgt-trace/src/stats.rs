//! Latency histograms. (being written)
