//! A small iSCSI initiator for tests. (being written)
