// Package contain makes sure that nothing a job started outlives it,
// working on process ids, descriptors and paths only (the launcher's core
// maps its ranks onto them).
//
// The launcher's core uses it three ways. Cgroups: NewJob makes a cgroup v2
// subtree for a job under this process's own cgroup (Base), one cgroup per
// rank, each rank born inside its own; Job.Kill ends every descendant at
// once, Job.Remove removes the subtree. Process groups, where cgroups
// cannot be made: Subreaper, NewTag and Sweep. The guard: StartGuard
// starts, once per process, a guard process that holds the read end of a
// pipe only this process writes; Watch, WatchCgroups, MkdirTemp and
// RemoveOnDeath tell it what to end, and when the pipe reaches EOF (this process exited or
// died, even by SIGKILL) it kills the process groups, kills and removes
// the job cgroups, and removes the directories.
//
// The guard is this very binary re-executed through /proc/self/exe in the
// guard role, recognised by this package's init (as with moby/sys/reexec):
// every program that links the launcher (the mpspawn CLI, Go API programs,
// tests) is its own guard, with no shell or other program needed, so
// minimal images without /bin/sh are contained as well.
//
// Linux only; elsewhere StartGuard, RemoveOnDeath and CgroupError return
// ErrUnsupported, and MkdirTemp is os.MkdirTemp.
package contain
