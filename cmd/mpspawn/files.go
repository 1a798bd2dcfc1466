package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/mpspawn/mpspawn/internal/safefs"
	"github.com/mpspawn/mpspawn/launcher/job"
)

// The files mpspawn writes into directories it is told to use (--log-dir,
// --summary-json, TORCHELASTIC_ERROR_FILE) are made by package safefs's
// rules, so that root writing in a shared directory never writes through a
// link another user planted there: such a path is bad input (exit 2)
// when it is found before the ranks start.

// makeRunDir makes --log-dir's <run-id>/attempt_0, following no link
// beneath --log-dir.
func makeRunDir(logDir, runID string) error {
	base, err := safefs.MkdirAll(logDir, 0o755)
	if err != nil {
		return err
	}
	defer base.Close()
	d, err := base.MkdirAll(filepath.Join(runID, "attempt_0"), 0o755)
	if err != nil {
		return err
	}
	return d.Close()
}

// checkSummary refuses a --summary-json path that the summary would be
// written through: a planted link, or another user's file in a directory
// others can write. "-" is stdout.
func checkSummary(path string) error {
	if path == "" || path == "-" {
		return nil
	}
	if err := safefs.Check(path); err != nil {
		return usagef("--summary-json %s: %s", path, describe(err))
	}
	return nil
}

// writeSummary writes the JSON summary to path, never more readable than
// logDir (the ranks' logs, whose stderr it quotes) when there is one, and
// never through a link; a partial summary (a full disk) is removed, as it
// would read as a broken job.
func writeSummary(path, logDir string, sum *job.Summary) error {
	perm := safefs.Below(logDir, 0o666)
	if logDir == "" {
		perm = 0o666
	}
	if err := safefs.WriteFile(path, perm, sum.WriteJSON); err != nil {
		return fmt.Errorf("summary %s not written: %s", path, describe(err))
	}
	return nil
}

// describeFile words a refusal of package safefs for one line.
func describeFile(err error) (string, bool) {
	var le *safefs.LinkError
	var oe *safefs.OwnerError
	var ke *safefs.KindError
	switch {
	case errors.As(err, &le):
		return fmt.Sprintf("%s is a symbolic link mpspawn did not make; refusing to write through it", le.Path), true
	case errors.As(err, &oe):
		return fmt.Sprintf("%s belongs to uid %d, not to this user, in a directory others can write; refusing to write there", oe.Path, oe.UID), true
	case errors.As(err, &ke):
		return fmt.Sprintf("%s is not %s", ke.Path, ke.Want), true
	}
	return "", false
}
