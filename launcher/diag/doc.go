// Package diag takes the stacks of running ranks and names the causes the
// launcher finds itself: a hang (HangError) or a timeout (TimeoutError).
//
// A user of the CLI or of package launcher asks for stacks through
// launcher.Options.Watchdog; `mpspawn stacks PID` calls DumpStacks to take
// the stacks of another launcher's ranks without stopping them.
//
// How it works: Python ranks run a stack hook (HookSource, installed by
// Dir as a sitecustomize module, or run by the forkserver in each forked
// rank) that registers faulthandler on StackSignal; Take signals such a
// rank and reads what it appends to its stack file. A Go rank (recognised
// by its build info) can only be made to dump its goroutines by SIGQUIT,
// which ends it, so Take does that only when the job is being stopped,
// keeping its stderr with a Capture. Linux only: elsewhere NewDir and
// DumpStacks return ErrUnsupported.
package diag
