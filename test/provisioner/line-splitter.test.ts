import { describe, expect, it } from 'vitest';
import { LineSplitter } from '../../src/provisioner/line-splitter.js';

function split(chunks: string[], maxLength = 10): string[] {
  const lines: string[] = [];
  const splitter = new LineSplitter(maxLength, (line) => lines.push(line));
  for (const chunk of chunks) splitter.push(chunk);
  splitter.end();
  return lines;
}

describe('LineSplitter', () => {
  it('when lines span chunks › joins them and splits on newlines', () => {
    expect(split(['ab', 'c\nde', 'f\n\ng'])).toEqual(['abc', 'def', '', 'g']);
  });

  it('when lines end in CRLF › drops the carriage return', () => {
    expect(split(['a\r\nb\r\n'])).toEqual(['a', 'b']);
  });

  it('when a line is longer than the limit › cuts it and skips the rest up to its newline', () => {
    expect(split(['0123456789abc', 'def\nnext\n'])).toEqual(['0123456789…', 'next']);
  });

  it('when the stream ends without output › emits nothing', () => {
    expect(split([])).toEqual([]);
  });
});
