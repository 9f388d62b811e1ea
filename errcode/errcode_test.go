package errcode_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/musterkit/muster/errcode"
)

func TestIsAndOf(t *testing.T) {
	base := errcode.New(errcode.NotFound, "container %q", "web")
	wrapped := fmt.Errorf("start: %w", base)
	if !errors.Is(wrapped, errcode.NotFound) {
		t.Fatal("errors.Is did not find NotFound through a wrap")
	}
	if errors.Is(wrapped, errcode.AlreadyExists) {
		t.Fatal("errors.Is matched the wrong code")
	}
	if got := errcode.Of(wrapped); got != errcode.NotFound {
		t.Fatalf("Of = %v, want NotFound", got)
	}
	if got := wrapped.Error(); got != `start: container "web"` {
		t.Fatalf("message = %q", got)
	}
	var e *errcode.Error
	if !errors.As(wrapped, &e) || e.Code != errcode.NotFound {
		t.Fatal("errors.As did not find *Error")
	}
}

func TestOfOutermostWins(t *testing.T) {
	inner := errcode.New(errcode.Internal, "disk")
	outer := errcode.Wrap(errcode.Unavailable, fmt.Errorf("agent: %w", inner))
	if got := errcode.Of(outer); got != errcode.Unavailable {
		t.Fatalf("Of = %v, want Unavailable", got)
	}
	if !errors.Is(outer, errcode.Internal) {
		t.Fatal("inner code must stay visible to errors.Is")
	}
}

func TestOfPlainAndJoined(t *testing.T) {
	if errcode.Of(errors.New("x")) != errcode.Unknown || errcode.Of(nil) != errcode.Unknown {
		t.Fatal("uncoded errors must be Unknown")
	}
	j := errors.Join(errors.New("a"), errcode.New(errcode.PermissionDenied, "b"))
	if errcode.Of(j) != errcode.PermissionDenied {
		t.Fatal("Of must look into joined errors")
	}
	if errcode.Of(fmt.Errorf("x: %w", errcode.FailedPrecondition)) != errcode.FailedPrecondition {
		t.Fatal("a bare Code counts")
	}
	if errcode.Wrap(errcode.Internal, nil) != nil {
		t.Fatal("Wrap(nil) must be nil")
	}
}

func TestCodeNames(t *testing.T) {
	for c := errcode.Unknown; c <= errcode.Internal; c++ {
		if c.String() == "" || c.String()[0] == 'c' {
			t.Fatalf("code %d has no name", int(c))
		}
	}
	if errcode.Code(99).String() != "code(99)" {
		t.Fatal("out-of-range code name")
	}
}

func TestContextErrorsAreCanceled(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("delete: %w", context.Canceled),
		errors.Join(errors.New("x"), fmt.Errorf("y: %w", context.DeadlineExceeded)),
	} {
		if got := errcode.Of(err); got != errcode.Canceled {
			t.Errorf("Of(%v) = %v, want Canceled", err, got)
		}
	}
	// A code in the chain wins over the context error.
	if got := errcode.Of(errcode.New(errcode.Unavailable, "agent: %w", context.Canceled)); got != errcode.Unavailable {
		t.Errorf("Of = %v, want Unavailable", got)
	}
	if got := errcode.Canceled.String(); got != "canceled" {
		t.Errorf("String = %q", got)
	}
}
