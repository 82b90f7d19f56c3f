//! headnode
