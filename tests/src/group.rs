//! A child in a process group of its own, stopped with everything it
//! started (the whole group, SIGKILL) when dropped: a test's load, however
//! the test ends.

use std::{
    io,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
};

pub struct Group(Child);

impl Group {
    /// Spawns `cmd` in a new process group, with no stdin and its output
    /// discarded.
    pub fn spawn(cmd: &mut Command) -> io::Result<Group> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map(Group)
    }

    /// Takes a child already spawned with `process_group(0)`.
    pub fn of(child: Child) -> Group {
        Group(child)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the process group this guard's child leads.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}
