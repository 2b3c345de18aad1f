// The dashboard's settings in loadConfig: defaults, what DASHBOARD_ALLOWED_ORIGINS and the event stream caps
// accept, and the ConfigError naming the variable for what they refuse.
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/shared/config.js';

describe('dashboard settings', () => {
  it('defaults to no extra origin and caps of 32 streams per client, 1000 in all', () => {
    const config = loadConfig({});
    expect(config.dashboardAllowedOrigins).toEqual([]);
    expect(config.dashboardSseMaxPerClient).toBe(32);
    expect(config.dashboardSseMaxStreams).toBe(1000);
  });

  it('reads DASHBOARD_ALLOWED_ORIGINS as origins the way browsers send them', () => {
    const config = loadConfig({
      DASHBOARD_ALLOWED_ORIGINS:
        ' https://Jobs.Example.com/ , http://ops.internal:8080,https://a.example:443',
    });
    expect(config.dashboardAllowedOrigins).toEqual([
      'https://jobs.example.com',
      'http://ops.internal:8080',
      'https://a.example',
    ]);
  });

  it('refuses an allowed origin with a path, a query or credentials, or that is not http(s)', () => {
    for (const [raw, message] of [
      [
        'https://jobs.example.com/admin',
        /DASHBOARD_ALLOWED_ORIGINS takes origins .*"https:\/\/jobs\.example\.com\/admin"/,
      ],
      ['https://jobs.example.com?x=1', /DASHBOARD_ALLOWED_ORIGINS takes origins/],
      ['https://u:p@jobs.example.com', /DASHBOARD_ALLOWED_ORIGINS takes origins/],
      ['jobs.example.com', /DASHBOARD_ALLOWED_ORIGINS is not a URL/],
      ['ftp://jobs.example.com', /DASHBOARD_ALLOWED_ORIGINS must be a http: or https: URL/],
    ] as const) {
      expect(() => loadConfig({ DASHBOARD_ALLOWED_ORIGINS: raw }), raw).toThrow(ConfigError);
      expect(() => loadConfig({ DASHBOARD_ALLOWED_ORIGINS: raw }), raw).toThrow(message);
    }
  });

  it('reads the stream caps, and refuses what is not a whole number from 1', () => {
    const config = loadConfig({ DASHBOARD_SSE_MAX_PER_CLIENT: '4', DASHBOARD_SSE_MAX_STREAMS: '50' });
    expect([config.dashboardSseMaxPerClient, config.dashboardSseMaxStreams]).toEqual([4, 50]);
    for (const name of ['DASHBOARD_SSE_MAX_PER_CLIENT', 'DASHBOARD_SSE_MAX_STREAMS']) {
      for (const raw of ['0', '-1', '2.5', 'many']) {
        expect(() => loadConfig({ [name]: raw }), `${name}=${raw}`).toThrow(
          new RegExp(`^${name} must be a whole number from 1 to`),
        );
      }
    }
  });
});
