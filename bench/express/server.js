// What the providers' integration guides lead to: an Express service that forwards every
// call to the provider's API with a bearer token added by axios. Benchmark baseline only.
const express = require('express');
const axios = require('axios');

const upstream = process.env.UPSTREAM;
const token = process.env.TOKEN;
const app = express();
app.use(express.raw({ type: '*/*', limit: '10mb' }));

app.all('*', async (req, res) => {
  try {
    const r = await axios({
      method: req.method,
      url: upstream + req.originalUrl,
      headers: { Authorization: `Bearer ${token}` },
      data: req.body && req.body.length ? req.body : undefined,
      responseType: 'arraybuffer',
      validateStatus: () => true,
    });
    res.status(r.status);
    if (r.headers['content-type']) res.set('content-type', r.headers['content-type']);
    res.send(r.data);
  } catch (e) {
    res.status(502).json({ error: 'upstream_unreachable', message: String(e.message) });
  }
});

app.listen(Number(process.env.PORT), '127.0.0.1');
