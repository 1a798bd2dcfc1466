// Package mpspawn holds the module's release version, read from the
// VERSION file at the top of the repository. The launcher itself is
// command mpspawn (cmd/mpspawn) and packages launcher, launcher/mp, ipc,
// gpu, place and rendezvous.
package mpspawn

import (
	_ "embed"
	"strings"
)

//go:embed VERSION
var version string

// Version is the release version of this source tree, such as "0.1.0":
// the VERSION file's first line. Every build reads it (go build, go
// install, make), so a binary never reports "(devel)".
func Version() string {
	v, _, _ := strings.Cut(version, "\n")
	return strings.TrimSpace(v)
}
