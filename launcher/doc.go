// Package launcher is the core of mpspawn: it starts rank processes and
// supervises them until every one has been reaped.
//
// A front (the torchrun job in package launcher/job, the Go API in
// launcher/mp) describes each rank with a Spec and calls Start; the Group
// it returns supervises them, and Wait gives the Result:
//
//	g, err := launcher.Start(ctx, specs, opts) // every rank started, or none left running
//	...                                        // g.Forward / g.Stop from other goroutines
//	res := g.Wait()                            // every rank reaped, every goroutine done
//
// The first rank to exit non-zero or by a signal is the root cause, and
// every other rank's process group gets SIGTERM at once and SIGKILL after
// the grace period; signals the launcher receives are forwarded
// (Group.Forward); output is relayed line by line (Output); error files
// are read; a watchdog stops a job that hangs or runs too long after
// taking the ranks' stacks (package launcher/diag). A stop that must take
// the stacks first, such as another node's hang, comes as a StacksFirst
// cause of the context: the core knows nothing of the rendezvous.
// Channels give ranks control channels to an ipc.Broker; services
// (StartService) are helper processes such as a c10d store.
//
// How it works: ranks are started through a StartMethod (spawn, the
// default, forks and execs each rank from a locked OS thread; a
// Forkserver forks Python ranks from one server that imported their heavy
// modules once), made by NewStartMethod. Supervision is event-driven: one
// waiter per rank blocks in wait4 and reports the exit at once, so the
// launcher idles at no CPU while ranks run.
//
// No rank outlives the launcher: each rank leads its own process group,
// has SIGKILL as its parent-death signal, and is contained by a cgroup or
// by its process group with a subreaper sweep; a guard process (this very
// binary re-executed, see launcher/internal/contain) kills what is left
// when the launcher dies, even by SIGKILL.
//
// Linux is the target. On other platforms the package builds, and Start
// returns ErrUnsupported.
package launcher
