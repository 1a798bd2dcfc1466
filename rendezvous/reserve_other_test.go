//go:build !linux

package rendezvous

// helperMain is only used on Linux, where the tests start helper processes.
func helperMain(mode string) int { return 2 }
