// Package errcode is the one error vocabulary of every Muster package and driver.
//
// Drivers return errors carrying a Code; portable types wrap them once with the
// subject's name. Callers test the code with errors.Is or read it with Of:
//
//	if errors.Is(err, errcode.NotFound) { ... }
//	switch errcode.Of(err) { ... }
package errcode

import (
	"context"
	"errors"
	"fmt"
)

// Code classifies an error. A Code is itself an error, so errors.Is(err, code)
// reports whether err carries that code.
type Code int

const (
	// Unknown is the code of an error that carries none.
	Unknown Code = iota
	// NotFound: the named thing does not exist.
	NotFound
	// AlreadyExists: the named thing exists and may not be created again.
	AlreadyExists
	// InvalidArgument: the input is malformed, whatever the system's state.
	InvalidArgument
	// FailedPrecondition: the input is valid but the system is not in a state
	// that allows the operation (for example exec in a stopped container).
	FailedPrecondition
	// Unavailable: a server, daemon or kernel feature cannot be reached now;
	// retrying later may succeed.
	Unavailable
	// Unimplemented: the driver or the kernel does not support the operation.
	Unimplemented
	// PermissionDenied: the caller is not allowed to do the operation.
	PermissionDenied
	// Internal: an invariant broke or a component failed unexpectedly.
	Internal
	// Canceled: the caller's context was cancelled or its deadline passed
	// before the operation completed. Of reports it for an error that
	// carries no other code but context.Canceled or
	// context.DeadlineExceeded; errors.Is with those tells which.
	Canceled
)

var names = [...]string{
	Unknown:            "unknown",
	NotFound:           "not found",
	AlreadyExists:      "already exists",
	InvalidArgument:    "invalid argument",
	FailedPrecondition: "failed precondition",
	Unavailable:        "unavailable",
	Unimplemented:      "unimplemented",
	PermissionDenied:   "permission denied",
	Internal:           "internal",
	Canceled:           "canceled",
}

// String returns the code's name, such as "not found".
func (c Code) String() string {
	if c < 0 || int(c) >= len(names) {
		return fmt.Sprintf("code(%d)", int(c))
	}
	return names[c]
}

// Error makes a Code usable as an errors.Is target.
func (c Code) Error() string { return c.String() }

// Error is an error with a Code. Its message is the wrapped error's message;
// the code is not repeated in it.
type Error struct {
	Code Code
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is e's Code.
func (e *Error) Is(target error) bool {
	c, ok := target.(Code)
	return ok && c == e.Code
}

// New returns an error with code c and a message formatted as fmt.Errorf does
// (so %w wraps).
func New(c Code, format string, args ...any) error {
	return &Error{Code: c, Err: fmt.Errorf(format, args...)}
}

// Wrap returns err with code c, or nil if err is nil. The message is unchanged.
func Wrap(c Code, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Code: c, Err: err}
}

// Of returns the code of the outermost coded error in err's chain, or
// Unknown. A bare Code in the chain counts too, and a chain without a code
// that holds a context error is Canceled.
func Of(err error) Code {
	if c := of(err); c != Unknown {
		return c
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Canceled
	}
	return Unknown
}

func of(err error) Code {
	for err != nil {
		switch e := err.(type) {
		case *Error:
			return e.Code
		case Code:
			return e
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				if c := of(inner); c != Unknown {
					return c
				}
			}
			return Unknown
		default:
			return Unknown
		}
	}
	return Unknown
}
