package mpspawn

import (
	"regexp"
	"testing"
)

func TestVersion(t *testing.T) {
	if v := Version(); !regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$`).MatchString(v) {
		t.Errorf("Version() = %q; want a semantic version from VERSION, such as 0.1.0", v)
	}
}
