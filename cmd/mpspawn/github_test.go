package main

import "testing"

func TestUserFrame(t *testing.T) {
	py := `Traceback (most recent call last):
  File "/w/proj/train.py", line 40, in <module>
    main()
  File "/w/proj/train.py", line 12, in main
    step()
  File "/usr/lib/python3/dist-packages/torch/nn/modules/module.py", line 1194, in _call_impl
    return forward_call(*input, **kwargs)
ValueError: boom`
	goPanic := `panic: boom

goroutine 1 [running]:
github.com/x/y.helper(...)
	/root/go/pkg/mod/github.com/x/y@v1.0.0/y.go:10 +0x1d
main.work()
	/w/proj/cmd/run/main.go:23 +0x25
main.main()
	/w/proj/cmd/run/main.go:30 +0x12
exit status 2`
	tests := []struct {
		name, text, root string
		want             frame
		ok               bool
	}{
		{"python innermost in tree", py, "/w/proj", frame{"train.py", 12}, true},
		{"go innermost in tree", goPanic, "/w/proj", frame{"cmd/run/main.go", 23}, true},
		{"outside the tree", py, "/elsewhere", frame{}, false},
		{"no traceback", "Killed", "/w/proj", frame{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := userFrame(tt.text, tt.root)
			if got != tt.want || ok != tt.ok {
				t.Errorf("userFrame(%s, %q) = %v, %v; want %v, %v", tt.name, tt.root, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestGitHubEscapes(t *testing.T) {
	if got, want := ghData("a%b\nc"), "a%25b%0Ac"; got != want {
		t.Errorf("ghData = %q; want %q", got, want)
	}
	if got, want := ghProperty("rank 1: x,y"), "rank 1%3A x%2Cy"; got != want {
		t.Errorf("ghProperty = %q; want %q", got, want)
	}
}
