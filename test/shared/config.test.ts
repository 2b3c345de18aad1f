// loadConfig's Redis Cluster settings: what REDIS_CLUSTER accepts and what it refuses, before anything connects.
import { describe, expect, it } from 'vitest';
import { ConfigError, hashTag, loadConfig } from '../../src/shared/config.js';

describe('hashTag', () => {
  it.each([
    ['{wsjobs}', 'wsjobs'],
    ['{wsjobs}:x', 'wsjobs'],
    ['app-{tenant1}-jobs', 'tenant1'],
    ['a}{b}', 'b'],
    ['{a}{b}', 'a'],
  ])('finds the tag Redis Cluster hashes in %s', (key, tag) => {
    expect(hashTag(key)).toBe(tag);
  });

  it.each(['wsjobs', '{}wsjobs', 'ws{jobs', 'ws}jobs{'])('finds none in %s', (key) => {
    expect(hashTag(key)).toBeUndefined();
  });
});

describe('when REDIS_CLUSTER is not set', () => {
  it('keeps one Redis, the lock on it, and the untagged default prefix', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      redisUrl: 'redis://127.0.0.1:6379',
      redisCluster: false,
      lockRedisUrls: ['redis://127.0.0.1:6379'],
      lockRedisCluster: false,
      queuePrefix: 'wsjobs',
    });
  });

  it('refuses a list of URLs in REDIS_URL', () => {
    expect(() => loadConfig({ REDIS_URL: 'redis://a:7000,redis://b:7000' })).toThrow(
      /REDIS_URL is not a URL/,
    );
  });
});

describe('when REDIS_CLUSTER=true', () => {
  it('takes REDIS_URL as the seed nodes, defaults the prefix to {wsjobs} and puts the lock on the cluster', () => {
    const config = loadConfig({
      REDIS_CLUSTER: 'true',
      REDIS_URL: ' redis://10.0.0.1:7000, redis://10.0.0.2:7000 ',
    });
    expect(config).toMatchObject({
      redisUrl: 'redis://10.0.0.1:7000,redis://10.0.0.2:7000',
      redisCluster: true,
      lockRedisUrls: ['redis://10.0.0.1:7000,redis://10.0.0.2:7000'],
      lockRedisCluster: true,
      queuePrefix: '{wsjobs}',
    });
  });

  it('keeps LOCK_REDIS_URLS as independent nodes, not the cluster', () => {
    const config = loadConfig({
      REDIS_CLUSTER: 'true',
      LOCK_REDIS_URLS: 'redis://l1:6379,redis://l2:6379,redis://l3:6379',
    });
    expect(config.lockRedisUrls).toEqual(['redis://l1:6379', 'redis://l2:6379', 'redis://l3:6379']);
    expect(config.lockRedisCluster).toBe(false);
  });

  it.each(['wsjobs', 'ws{jobs', '{}wsjobs'])('refuses QUEUE_PREFIX=%s, which has no hash tag', (prefix) => {
    const load = () => loadConfig({ REDIS_CLUSTER: 'true', QUEUE_PREFIX: prefix });
    expect(load).toThrow(ConfigError);
    expect(load).toThrow(/QUEUE_PREFIX .* has no hash tag, but REDIS_CLUSTER=true.*e\.g\. "\{wsjobs\}"/);
  });

  it('accepts a prefix with a hash tag anywhere in it', () => {
    expect(loadConfig({ REDIS_CLUSTER: 'true', QUEUE_PREFIX: 'prod-{wsjobs}' }).queuePrefix).toBe(
      'prod-{wsjobs}',
    );
  });

  it.each([
    ['REDIS_URL', 'redis://a:7000,http://b:7000', /REDIS_URL must be a redis: or rediss: URL, got "http:"/],
    ['REDIS_URL', 'redis://a:7000,nope', /REDIS_URL is not a URL: "nope"/],
    ['REDIS_URL', ' , ', /REDIS_URL names no URL/],
  ])('refuses %s=%s naming it', (name, raw, message) => {
    expect(() => loadConfig({ REDIS_CLUSTER: 'true', [name]: raw })).toThrow(message);
  });

  it('refuses a REDIS_CLUSTER that is not a boolean', () => {
    expect(() => loadConfig({ REDIS_CLUSTER: 'yes' })).toThrow(
      /REDIS_CLUSTER must be true or false, got "yes"/,
    );
  });
});
