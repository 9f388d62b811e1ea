package image

import (
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Manifest describes an image: a named, content-addressed archive blob.
type Manifest struct {
	// Name is a DNS label (see ValidName).
	Name string `json:"name"`
	// Digest is "sha256:<64 lowercase hex>" of the blob, the compressed
	// archive bytes.
	Digest string `json:"digest"`
	// Size is the blob's length in bytes.
	Size int64 `json:"size"`
	// Created is when the image was built.
	Created time.Time `json:"created"`
	// Arch is the GOARCH the image's binaries run on.
	Arch string `json:"arch"`
	// Labels are free annotations. Keys are 1-128 characters of
	// [A-Za-z0-9._/-] starting with a letter or digit; values are at most
	// 1024 bytes of printable UTF-8 (unicode.IsPrint: letters, marks,
	// numbers, punctuation, symbols and the ASCII space), so no control
	// or format character such as U+202E RIGHT-TO-LEFT OVERRIDE can make a
	// label display as something else. There are at most MaxLabels of
	// them, their keys and values adding up to at most MaxLabelBytes.
	Labels map[string]string `json:"labels,omitempty"`
}

// Caps on a manifest's labels. A manifest travels whole in a header of the
// agent's protocol and in every image list, so its labels are bounded in
// number and in total size, as Kubernetes bounds an object's annotations
// (256 KiB). Image labels are descriptions (OCI annotations such as
// org.opencontainers.image.description), longer than container labels but
// as few: 64 of them, 64 KiB in all, a quarter of Kubernetes' cap.
const (
	MaxLabels     = 64
	MaxLabelBytes = 64 << 10
)

// Validate returns an error with code errcode.InvalidArgument if the name,
// digest, size, arch or labels are malformed.
func (m *Manifest) Validate() error {
	return m.validate(true)
}

// validate is Validate; with requireDigest false an empty Digest passes,
// for a manifest whose blob has not been hashed yet.
func (m *Manifest) validate(requireDigest bool) error {
	if err := names.Label(m.Name); err != nil {
		return err
	}
	if m.Digest != "" || requireDigest {
		if err := validDigest(m.Digest); err != nil {
			return errcode.New(errcode.InvalidArgument, "image %s: %w", m.Name, err)
		}
	}
	if m.Size < 0 {
		return errcode.New(errcode.InvalidArgument, "image %s: negative size %d", m.Name, m.Size)
	}
	if m.Arch == "" || len(m.Arch) > 32 || strings.TrimFunc(m.Arch, isLowerAlnum) != "" {
		return errcode.New(errcode.InvalidArgument, "image %s: arch %q is not a GOARCH value", m.Name, m.Arch)
	}
	if len(m.Labels) > MaxLabels {
		return errcode.New(errcode.InvalidArgument, "image %s: %d labels; the limit is %d", m.Name, len(m.Labels), MaxLabels)
	}
	total := 0
	for k, v := range m.Labels {
		total += len(k) + len(v)
	}
	if total > MaxLabelBytes {
		return errcode.New(errcode.InvalidArgument, "image %s: labels hold %d bytes of keys and values; the limit is %d", m.Name, total, MaxLabelBytes)
	}
	for k, v := range m.Labels {
		if err := validLabel(k, v); err != nil {
			return errcode.New(errcode.InvalidArgument, "image %s: %w", m.Name, err)
		}
	}
	return nil
}

// validDigest checks the form "sha256:<64 lowercase hex>".
func validDigest(d string) error {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 || strings.TrimFunc(hex, isLowerHex) != "" {
		return errcode.New(errcode.InvalidArgument, "digest %.80q is not of the form sha256:<64 lowercase hex digits>", d)
	}
	return nil
}

func isLowerHex(c rune) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

func validLabel(k, v string) error {
	keyChar := func(c rune) bool {
		return isLowerAlnum(c) || 'A' <= c && c <= 'Z' || strings.ContainsRune("._/-", c)
	}
	if k == "" || len(k) > 128 || strings.TrimFunc(k, keyChar) != "" || !isLowerAlnum(unicode.ToLower(rune(k[0]))) {
		return errcode.New(errcode.InvalidArgument, "label key %.140q: use 1-128 characters of [A-Za-z0-9._/-] starting with a letter or digit", k)
	}
	if len(v) > 1024 || !utf8.ValidString(v) {
		return errcode.New(errcode.InvalidArgument, "label %s: value must be at most 1024 bytes of printable UTF-8", k)
	}
	if i := strings.IndexFunc(v, func(r rune) bool { return !unicode.IsPrint(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(v[i:])
		return errcode.New(errcode.InvalidArgument, "label %s: value contains %q (%U), a control, format or other non-printable character", k, r, r)
	}
	return nil
}

func isLowerAlnum(c rune) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
