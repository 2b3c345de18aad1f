// Splits a text stream into lines, cutting runaway lines so one endless line cannot fill memory.

export class LineSplitter {
  private buffer = '';
  /** The current line was cut; the rest of it is skipped up to its newline. */
  private cut = false;

  constructor(
    /** Longer lines are cut to this many characters plus '…'. */
    private readonly maxLength: number,
    private readonly onLine: (line: string) => void,
  ) {}

  push(chunk: string): void {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf('\n', start);
      if (newline === -1) {
        this.append(chunk.slice(start));
        return;
      }
      this.append(chunk.slice(start, newline));
      this.emit();
      start = newline + 1;
    }
  }

  /** Emits a last line that had no newline. */
  end(): void {
    if (this.buffer !== '' || this.cut) this.emit();
  }

  private append(text: string): void {
    if (this.cut || text === '') return;
    this.buffer += text;
    if (this.buffer.length > this.maxLength) {
      this.buffer = `${this.buffer.slice(0, this.maxLength)}…`;
      this.cut = true;
    }
  }

  private emit(): void {
    const line = this.buffer.endsWith('\r') ? this.buffer.slice(0, -1) : this.buffer;
    this.buffer = '';
    this.cut = false;
    this.onLine(line);
  }
}
