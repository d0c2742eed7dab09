package realm

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// The sampler's step runs on every token of every sampled sequence, so its JSON is read and
// written by hand here: no reflection, and the buffers, steps, candidates and token slices are
// reused from step to step. Token texts repeat (a model has a fixed vocabulary) and configs
// repeat for a generation's life, so their strings are interned instead of allocated each step.

// maxInterned bounds each intern table; past it the table starts over.
const maxInterned = 1 << 16

type stepBuffers struct {
	in      []byte
	out     []byte
	steps   []SequenceStep
	cands   []Candidate
	tokens  []uint32
	spans   []stepSpan
	texts   map[uint32]string // token id -> its last text
	configs map[string]string
	scratch []byte // an escaped string, unescaped
}

// stepSpan locates a step's candidates and tokens in the shared backing slices, which may move
// while later steps are parsed.
type stepSpan struct{ c0, c1, t0, t1 int }

func (b *stepBuffers) input(n int) []byte {
	if cap(b.in) < n {
		b.in = make([]byte, n)
	}
	return b.in[:n]
}

var errStepJSON = errors.New("malformed step input")

type scanner struct {
	b []byte
	i int
}

func (s *scanner) fail(what string) error {
	return fmt.Errorf("%w: %s at byte %d", errStepJSON, what, s.i)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek skips white space and returns the next byte (0 at the end).
func (s *scanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) expect(c byte) error {
	if s.peek() != c {
		return s.fail("expected " + string(c))
	}
	s.i++
	return nil
}

// more is for the loop over an object's members or an array's items: after the opening bracket,
// it says whether another one follows (consuming the comma between them).
func (s *scanner) more(closing byte, first bool) (bool, error) {
	c := s.peek()
	if c == closing {
		s.i++
		return false, nil
	}
	if !first {
		if c != ',' {
			return false, s.fail("expected , or " + string(closing))
		}
		s.i++
	}
	return true, nil
}

// rawString returns a string's bytes without its quotes; escaped reports whether it has escapes
// (the bytes are then still escaped). The bytes alias the input.
func (s *scanner) rawString() (raw []byte, escaped bool, err error) {
	if s.peek() != '"' {
		return nil, false, s.fail("expected a string")
	}
	s.i++
	start := s.i
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, escaped, nil
		case '\\':
			escaped = true
			s.i += 2
		default:
			s.i++
		}
	}
	return nil, false, s.fail("unterminated string")
}

// str returns a string's bytes, unescaped; they alias the input or b.scratch until the next call.
func (s *scanner) str(b *stepBuffers) ([]byte, error) {
	raw, escaped, err := s.rawString()
	if err != nil || !escaped {
		return raw, err
	}
	out := b.scratch[:0]
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(raw) {
			return nil, s.fail("bad escape")
		}
		switch raw[i] {
		case '"', '\\', '/':
			out = append(out, raw[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, n := hex4(raw[i+1:])
			if n < 0 {
				return nil, s.fail("bad \\u escape")
			}
			i += 4
			if utf16.IsSurrogate(r) {
				// A pair is two escapes in a row; a lone half is U+FFFD, as encoding/json does.
				lo, n2 := rune(0), -1
				if i+2 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
					lo, n2 = hex4(raw[i+3:])
				}
				if pair := utf16.DecodeRune(r, lo); n2 >= 0 && pair != utf8.RuneError {
					r = pair
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, s.fail("bad escape")
		}
	}
	b.scratch = out
	return out, nil
}

func hex4(b []byte) (rune, int) {
	if len(b) < 4 {
		return 0, -1
	}
	var r rune
	for _, c := range b[:4] {
		r <<= 4
		switch {
		case '0' <= c && c <= '9':
			r |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			r |= rune(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, -1
		}
	}
	return r, 4
}

// number returns the bytes of a number (or of Python's Infinity, -Infinity, NaN).
func (s *scanner) number() ([]byte, error) {
	s.ws()
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		if ('0' <= c && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' ||
			('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') {
			s.i++
			continue
		}
		break
	}
	if s.i == start {
		return nil, s.fail("expected a number")
	}
	return s.b[start:s.i], nil
}

func (s *scanner) uint64() (uint64, error) {
	n, err := s.number()
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(unsafe.String(unsafe.SliceData(n), len(n)), 10, 64)
	if err != nil {
		return 0, s.fail("bad integer")
	}
	return v, nil
}

func (s *scanner) float() (float64, error) {
	n, err := s.number()
	if err != nil {
		return 0, err
	}
	switch string(n) {
	case "Infinity":
		return math.Inf(1), nil
	case "-Infinity":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(unsafe.String(unsafe.SliceData(n), len(n)), 64)
	if err != nil {
		return 0, s.fail("bad number")
	}
	return v, nil
}

// skip passes over any value.
func (s *scanner) skip() error {
	switch c := s.peek(); c {
	case '"':
		_, _, err := s.rawString()
		return err
	case '{', '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		s.i++
		for first := true; ; first = false {
			ok, err := s.more(closing, first)
			if err != nil || !ok {
				return err
			}
			if c == '{' {
				if _, _, err := s.rawString(); err != nil {
					return err
				}
				if err := s.expect(':'); err != nil {
					return err
				}
			}
			if err := s.skip(); err != nil {
				return err
			}
		}
	default:
		_, err := s.number() // also true, false, null
		return err
	}
}

// members calls f with each key of an object (the bytes alias the input, escapes left in:
// every key of the step input is plain ASCII) and f reads the value.
func (s *scanner) members(f func(key []byte) error) error {
	if err := s.expect('{'); err != nil {
		return err
	}
	for first := true; ; first = false {
		ok, err := s.more('}', first)
		if err != nil || !ok {
			return err
		}
		key, _, err := s.rawString()
		if err != nil {
			return err
		}
		if err := s.expect(':'); err != nil {
			return err
		}
		if err := f(key); err != nil {
			return err
		}
	}
}

func (s *scanner) items(f func() error) error {
	if err := s.expect('['); err != nil {
		return err
	}
	for first := true; ; first = false {
		ok, err := s.more(']', first)
		if err != nil || !ok {
			return err
		}
		if err := f(); err != nil {
			return err
		}
	}
}

// parse reads `{"steps":[{"id","config","step","candidates":[{"token","logprob","text"}],"tokens"}]}`.
func (b *stepBuffers) parse(in []byte) ([]SequenceStep, error) {
	if b.texts == nil || len(b.texts) > maxInterned {
		b.texts = make(map[uint32]string)
	}
	if b.configs == nil || len(b.configs) > maxInterned {
		b.configs = make(map[string]string)
	}
	b.steps, b.cands, b.tokens, b.spans = b.steps[:0], b.cands[:0], b.tokens[:0], b.spans[:0]
	s := &scanner{b: in}
	err := s.members(func(key []byte) error {
		if string(key) != "steps" {
			return s.skip()
		}
		return s.items(b.parseStep(s))
	})
	if err != nil {
		return nil, err
	}
	if s.peek() != 0 {
		return nil, s.fail("trailing data")
	}
	for i := range b.steps {
		sp := b.spans[i]
		b.steps[i].Candidates = b.cands[sp.c0:sp.c1:sp.c1]
		b.steps[i].Tokens = b.tokens[sp.t0:sp.t1:sp.t1]
	}
	return b.steps, nil
}

func (b *stepBuffers) parseStep(s *scanner) func() error {
	return func() error {
		var st SequenceStep
		sp := stepSpan{c0: len(b.cands), t0: len(b.tokens)}
		err := s.members(func(key []byte) error {
			var err error
			switch string(key) {
			case "id":
				st.ID, err = s.uint64()
			case "config":
				var v []byte
				if v, err = s.str(b); err == nil {
					st.Config = intern(b.configs, v)
				}
			case "step":
				var v uint64
				v, err = s.uint64()
				st.Step = int(v)
			case "candidates":
				err = s.items(func() error { return b.parseCandidate(s) })
			case "tokens":
				err = s.items(func() error {
					v, err := s.uint64()
					b.tokens = append(b.tokens, uint32(v))
					return err
				})
			default:
				err = s.skip()
			}
			return err
		})
		sp.c1, sp.t1 = len(b.cands), len(b.tokens)
		b.steps = append(b.steps, st)
		b.spans = append(b.spans, sp)
		return err
	}
}

func (b *stepBuffers) parseCandidate(s *scanner) error {
	var c Candidate
	err := s.members(func(key []byte) error {
		switch string(key) {
		case "token":
			v, err := s.uint64()
			c.Token = uint32(v)
			return err
		case "logprob":
			v, err := s.float()
			c.Logprob = v
			return err
		case "text":
			v, err := s.str(b)
			if err != nil {
				return err
			}
			// The key is the token, whose text is fixed for a model: a hit is one comparison.
			if t, ok := b.texts[c.Token]; ok && t == string(v) {
				c.Text = t
			} else {
				c.Text = string(v)
				b.texts[c.Token] = c.Text
			}
			return nil
		default:
			return s.skip()
		}
	})
	b.cands = append(b.cands, c)
	return err
}

func intern(m map[string]string, v []byte) string {
	if s, ok := m[string(v)]; ok { // no allocation for the lookup
		return s
	}
	s := string(v)
	m[s] = s
	return s
}

// appendDecisions writes `{"decisions":[...]}` as realm_sampler_decide reads it.
func appendDecisions(out []byte, ds []Decision) []byte {
	out = append(out, `{"decisions":[`...)
	for i, d := range ds {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"kind":"`...)
		out = append(out, d.Kind.String()...)
		out = append(out, '"')
		switch d.Kind {
		case KindToken:
			out = append(out, `,"token":`...)
			var t uint32
			if len(d.Tokens) > 0 {
				t = d.Tokens[0]
			}
			out = strconv.AppendUint(out, uint64(t), 10)
		case KindAllow, KindForce:
			out = append(out, `,"tokens":[`...)
			for j, t := range d.Tokens {
				if j > 0 {
					out = append(out, ',')
				}
				out = strconv.AppendUint(out, uint64(t), 10)
			}
			out = append(out, ']')
		case KindBias:
			out = append(out, `,"bias":[`...)
			for j, tb := range d.Bias {
				if j > 0 {
					out = append(out, ',')
				}
				out = append(out, `{"token":`...)
				out = strconv.AppendUint(out, uint64(tb.Token), 10)
				out = append(out, `,"bias":`...)
				out = appendBias(out, tb.Bias)
				out = append(out, '}')
			}
			out = append(out, ']')
		}
		out = append(out, '}')
	}
	return append(out, "]}"...)
}

// appendBias writes a bias as JSON, which has no infinities: -Inf (and anything at or below
// -1e30) becomes BanBias, +Inf the largest float32, NaN 0.
func appendBias(out []byte, v float32) []byte {
	switch {
	case v != v:
		v = 0
	case v <= -1e30:
		v = BanBias
	case v > math.MaxFloat32:
		v = math.MaxFloat32
	}
	return strconv.AppendFloat(out, float64(v), 'g', -1, 32)
}
