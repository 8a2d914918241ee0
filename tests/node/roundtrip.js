// Reads newline-delimited base64 bodies on stdin; for each writes one line: "1" when
// JSON.stringify(JSON.parse(body)) === body, else "0" followed by what JavaScript wrote instead.
"use strict";

const readline = require("node:readline");

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });

lines.on("line", (line) => {
  const body = Buffer.from(line, "base64").toString("utf8");
  let answer;
  try {
    const again = JSON.stringify(JSON.parse(body));
    answer = again === body ? "1" : "0" + again;
  } catch (error) {
    // "!" cannot start JSON text, so a parse failure is never mistaken for a re-serialisation.
    answer = "0!" + error.message.replace(/\n/g, " ");
  }
  process.stdout.write(answer + "\n");
});
