// A receiver built the way a customer builds one: the seed document's Node.js verification snippet,
// verbatim, in an Express app (route /webhook, secret in WEBHOOK_SECRET), plus /standard, which
// verifies the raw body with the npm `standardwebhooks` package (secret in STANDARD_SECRET), and
// /rotating, the snippet applied with two secrets as the README's rotation procedure says
// (WEBHOOK_SECRET and WEBHOOK_PREVIOUS_SECRET).
//
//   WEBHOOK_SECRET=whsec_... STANDARD_SECRET=whsec_... node seed_receiver.js [port]
//
// The port comes from argv, else PORT, else any free one. On stdout: "listening <port>" once,
// then one line per request once it is answered: "ok|bad <path> <status> <X-Stover-Delivery-Id>".
"use strict";

const express = require("express");
const { Webhook } = require("standardwebhooks");

const app = express();

app.use((req, res, next) => {
  res.on("finish", () => {
    const verdict = res.statusCode >= 200 && res.statusCode < 300 ? "ok" : "bad";
    const delivery = req.headers["x-stover-delivery-id"] || "-";
    process.stdout.write(`${verdict} ${req.path} ${res.statusCode} ${delivery}\n`);
  });
  next();
});

// Registered before the JSON parser so that this route sees the body exactly as it was sent.
app.post("/standard", express.raw({ type: "application/json" }), (req, res) => {
  try {
    new Webhook(process.env.STANDARD_SECRET).verify(req.body, req.headers);
  } catch (error) {
    return res.status(401).send(`Invalid signature: ${error.message}`);
  }
  res.status(200).send("OK");
});

app.use(express.json());

// ---- The seed document's snippet, exactly as printed ----

const crypto = require('crypto');

function verifySignature(payload, signature, secret) {
  const expected = crypto
    .createHmac('sha256', secret)
    .update(payload)
    .digest('hex');

  return `sha256=${expected}` === signature;
}

// In your webhook handler
app.post('/webhook', (req, res) => {
  const signature = req.headers['x-stover-signature'];
  const isValid = verifySignature(
    JSON.stringify(req.body),
    signature,
    process.env.WEBHOOK_SECRET
  );

  if (!isValid) {
    return res.status(401).send('Invalid signature');
  }

  // Process the webhook
  res.status(200).send('OK');
});

// ---- End of the snippet ----

// The README's procedure for rotating a secret: for the length of the overlap, the snippet's
// check is made with the new secret (WEBHOOK_SECRET) and the replaced one
// (WEBHOOK_PREVIOUS_SECRET); either passing accepts the webhook.
app.post('/rotating', (req, res) => {
  const signature = req.headers['x-stover-signature'];
  const secrets = [process.env.WEBHOOK_SECRET, process.env.WEBHOOK_PREVIOUS_SECRET];
  const isValid = secrets.some(
    (secret) => secret && verifySignature(JSON.stringify(req.body), signature, secret)
  );
  if (!isValid) {
    return res.status(401).send('Invalid signature');
  }
  res.status(200).send('OK');
});

const port = Number(process.argv[2] || process.env.PORT || 0);
const server = app.listen(port, "127.0.0.1", (error) => {
  if (error) {
    throw error;
  }
  process.stdout.write(`listening ${server.address().port}\n`);
});
